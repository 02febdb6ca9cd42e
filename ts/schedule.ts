/**
 * Pure schedule functions: the adversarial weight λ, the DiT learning rate and the EMA decay.
 * `step` is the number of optimizer steps already taken (0 for the first step).
 */

/**
 * λ at a step: 0 for the first `warmupSteps` steps, then a linear ramp over `rampSteps` steps up to `lambdaMax`
 * (reached at step `warmupSteps + rampSteps`); `rampSteps = 0` jumps straight to `lambdaMax`.
 */
export function lambdaAt(step: number, lambdaMax: number, warmupSteps: number, rampSteps: number): number {
  if (lambdaMax === 0 || step < warmupSteps) return 0;
  if (rampSteps <= 0) return lambdaMax;
  const progress = (step - warmupSteps + 1) / rampSteps;
  return lambdaMax * Math.min(1, progress);
}

/** Learning rate at a step: linear warm-up from lr/warmupSteps to `lr` over `warmupSteps` steps, then constant. */
export function lrAt(step: number, lr: number, warmupSteps: number): number {
  if (warmupSteps <= 0 || step >= warmupSteps) return lr;
  return (lr * (step + 1)) / warmupSteps;
}

/** EMA decay at a step: `min(decay, (1+t)/(10+t))` when `warmup` is on, otherwise `decay`. */
export function emaDecayAt(step: number, decay: number, warmup: boolean): number {
  if (!warmup) return decay;
  return Math.min(decay, (1 + step) / (10 + step));
}
