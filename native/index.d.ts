/* Declarations of the napi-rs addon (crates/sadm-node). napi-rs regenerates an equivalent file; no logic here. */
export interface StepOptions { lambda: number; lr: number; discLr: number; emaDecay: number; updateDisc: boolean }
export interface StepStats {
  step: number          // optimizer steps taken so far (after this one)
  loss: number          // total denoiser loss L_den + lambda*D
  mse: number           // epsilon MSE
  vb: number            // learned-sigma variational term (0 when learnSigma is off)
  structure?: number    // structural distance D (absent when the discriminator was not run)
  discLoss?: number     // discriminator loss (-D)
  gradNormDit: number
  gradNormDisc?: number
}
export interface SampleOptions { sampler: string /* "ddpm" | "ddim" */; steps: number; cfgScale: number; eta: number; seed: number; clipDenoised: boolean }
export interface BuildInfo { version: string; features: Array<string>; devices: Array<string> }
export interface ParamCounts { dit: number; discriminator: number }
export declare class NativeTrainer {
  /** coreConfigJson: JSON.stringify(CoreConfig); device "cpu" or "cuda:0" */
  static create(coreConfigJson: string, device: string): NativeTrainer
  /** Loads a checkpoint directory written by save(). */
  static load(dir: string, device: string): NativeTrainer
  /** x0: batch*C*H*W floats in [-1,1], NCHW; labels: batch ints in [0,numClasses) (ignored if numClasses=0). */
  step(x0: Float32Array, labels: Int32Array, opts: StepOptions): Promise<StepStats>
  /** Samples from the EMA weights; returns n*C*H*W floats (NCHW, roughly [-1,1]). */
  sample(labels: Int32Array, opts: SampleOptions): Promise<Float32Array>
  /** Writes a complete checkpoint directory atomically (temp dir + rename); state.json gets `extra` = JSON.parse(extraJson). */
  save(dir: string, extraJson: string): Promise<void>
  get stepCount(): number
  configJson(): string        // the CoreConfig JSON
  extraJson(): string         // the `extra` of the checkpoint it was loaded from, "{}" when fresh
  paramCounts(): ParamCounts
}
export declare class NativeModel {
  /** Loads the EMA weights (or the raw weights if useEma=false) of a checkpoint dir, for sampling only. */
  static load(dir: string, device: string, useEma: boolean): NativeModel
  sample(labels: Int32Array, opts: SampleOptions): Promise<Float32Array>
  configJson(): string
}
export declare function buildInfo(): BuildInfo
