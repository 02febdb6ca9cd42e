//! napi-rs glue: converts JS values, runs long work off the JS thread, and turns every error and panic into a
//! JS `Error` whose message names the cause. All logic lives in `sadm-core`.
use napi::bindgen_prelude::*;
use napi_derive::napi;
// candle is reached through sadm-core so that both crates always agree on its version.
use sadm_core::candle::{Device, Tensor};
use sadm_core::io::{checkpoint, weights};
use sadm_core::model::vae::{self, AutoencoderKL};
use sadm_core::classifier::{self, Extractor, LeNetTraining};
use sadm_core::metrics;
use sadm_core::diffusion::{DynamicThreshold, SampleOptions as CoreSampleOptions, Sampler, Spacing};
use sadm_core::error::{check_integer, MAX_SAFE_INTEGER};
use sadm_core::{device, train, CoreConfig, Trainer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn js_err(e: sadm_core::Error) -> Error {
    Error::from_reason(e.to_string())
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[napi_derive::module_init]
fn init() {
    device::init_cpu_threads();
    // A training step frees and re-allocates the same activation sizes every call. mimalloc's default hands freed
    // pages back to the kernel after 10 ms, so each step page-faulted (and the kernel zeroed) them again: 176k
    // faults and 5.5 s of system time in the step bench, against 900 faults and 2.3 s with purging off.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Runs `f` on the rayon pool (`device::on_pool`) with panics caught (see `sadm_core::error::catch_panic`) and
/// errors turned into JS errors.
fn guarded<T: Send>(what: &str, f: impl FnOnce() -> sadm_core::Result<T> + Send) -> Result<T> {
    sadm_core::error::catch_panic(what, || device::on_pool(f)).map_err(js_err)
}

fn lock<T>(m: &Mutex<T>) -> sadm_core::Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| sadm_core::Error::Input("the native state is unusable after an earlier internal error; reload the checkpoint".into()))
}

#[napi(object)]
pub struct StepOptions {
    pub lambda: f64,
    pub lr: f64,
    pub disc_lr: f64,
    pub ema_decay: f64,
    pub update_disc: bool,
}

#[napi(object)]
pub struct StepStats {
    /// Optimizer steps taken so far (after this one).
    pub step: f64,
    /// L_den + λ·D, what the denoiser minimised.
    pub loss: f64,
    pub mse: f64,
    pub vb: f64,
    pub structure: Option<f64>,
    pub disc_loss: Option<f64>,
    pub grad_norm_dit: f64,
    pub grad_norm_disc: Option<f64>,
    /// Set when the step was skipped (a non-finite loss or gradient norm; nothing was updated): what was not
    /// finite.
    pub skipped: Option<String>,
}

#[napi(object)]
#[derive(Clone)]
pub struct SampleOptions {
    /// "ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "unipc", "euler" or "heun".
    pub sampler: String,
    /// Sampler steps, an integer from 1 to the model's `numTimesteps` (Heun: at least 2).
    pub steps: f64,
    /// "linspace", "leading", "trailing" or "karras" (σ-space solvers only); omitted: the sampler's default
    /// (karras for euler and heun, linspace for the rest).
    pub spacing: Option<String>,
    /// Classifier-free guidance scale, 0 to 100.
    pub cfg_scale: f64,
    /// DDIM's η, 0 to 10 (0 for the other samplers).
    pub eta: f64,
    /// An integer from 0 to `Number.MAX_SAFE_INTEGER`.
    pub seed: f64,
    pub clip_denoised: bool,
    /// Dynamic thresholding of x̂0 instead of clipping: per sample, s = the `ratio` quantile of |x̂0| clamped to
    /// [1, `maxValue`]; x̂0 is clipped to [−s, s] and divided by s.
    pub dynamic_threshold: Option<DynamicThresholdOptions>,
    /// Guide only the first this many channels (DiT's `sample.py`: 3 of 4); omitted: all.
    pub guidance_channels: Option<f64>,
}

#[napi(object)]
#[derive(Clone)]
pub struct DynamicThresholdOptions {
    pub ratio: f64,
    pub max_value: f64,
}

/// Counts a sampling's network evaluations while it runs: pass one to `sample` and read `evaluations` from a
/// timer.
#[napi]
pub struct SampleProgress {
    evaluations: Arc<AtomicUsize>,
}

#[napi]
impl SampleProgress {
    #[napi(constructor)]
    pub fn new() -> Self {
        Self { evaluations: Arc::new(AtomicUsize::new(0)) }
    }

    /// Network evaluations done so far (Heun: two per step but the last), over every sampling this counter was
    /// given to.
    #[napi(getter)]
    pub fn evaluations(&self) -> f64 {
        self.evaluations.load(Ordering::Relaxed) as f64
    }
}

#[napi(object)]
pub struct BuildInfo {
    pub version: String,
    pub features: Vec<String>,
    pub devices: Vec<String>,
}

#[napi(object)]
pub struct ParamCounts {
    pub dit: f64,
    pub discriminator: f64,
}

/// The core's options from JS numbers, for a model of `num_timesteps` (the core checks the rest).
fn core_sample_options(o: &SampleOptions, num_timesteps: usize, progress: Option<Arc<AtomicUsize>>) -> sadm_core::Result<CoreSampleOptions> {
    let sampler = Sampler::parse(&o.sampler)?;
    let spacing = o.spacing.as_deref().map(Spacing::parse).transpose()?;
    let steps = check_integer("sample: steps", o.steps, 1, num_timesteps as u64)? as usize;
    let seed = check_integer("sample: seed", o.seed, 0, MAX_SAFE_INTEGER)?;
    let guidance_channels = o.guidance_channels.map(|g| check_integer("sample: guidanceChannels", g, 1, 1 << 16)).transpose()?.map(|g| g as usize);
    let dynamic_threshold = o.dynamic_threshold.as_ref().map(|t| DynamicThreshold { ratio: t.ratio, max_value: t.max_value });
    // The rest is checked by `train::sample_with` (`SampleOptions::validate`) before anything is sampled.
    Ok(CoreSampleOptions { sampler, steps, spacing, cfg_scale: o.cfg_scale, eta: o.eta, clip_denoised: o.clip_denoised, dynamic_threshold, seed, guidance_channels, progress })
}

fn to_vec(t: &Tensor) -> sadm_core::Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?)
}

/// A training run's native state: the DiT, its EMA, the discriminator, both optimizers and the RNG.
#[napi]
pub struct NativeTrainer {
    inner: Arc<Mutex<Trainer>>,
    extra: String,
}

#[napi]
impl NativeTrainer {
    /// A fresh trainer from a CoreConfig JSON on a device ("cpu" or "cuda:N").
    #[napi(factory, catch_unwind)]
    pub fn create(core_config_json: String, device: String) -> Result<Self> {
        guarded("NativeTrainer.create", || {
            let cfg = CoreConfig::from_json(&core_config_json)?;
            let dev = device::parse_device(&device)?;
            Ok(Self { inner: Arc::new(Mutex::new(Trainer::new(cfg, &dev)?)), extra: "{}".into() })
        })
    }

    /// A fresh trainer (new discriminator, optimizers, EMA and RNG) whose DiT starts from pretrained weights: a
    /// checkpoint directory (its EMA weights) or a safetensors file in the reference DiT names. What was not taken
    /// over (e.g. a class table of another size) is listed in `extraJson()` as `{"notes": [...]}`.
    #[napi(factory, catch_unwind)]
    pub fn from_pretrained(core_config_json: String, from: String, device: String) -> Result<Self> {
        guarded("NativeTrainer.fromPretrained", || {
            let cfg = CoreConfig::from_json(&core_config_json)?;
            let dev = device::parse_device(&device)?;
            let path = PathBuf::from(from);
            let weights = checkpoint::load_pretrained(&path, &dev)?;
            let (tr, notes) = Trainer::from_pretrained(cfg, &weights, &path, &dev)?;
            let extra = serde_json::json!({ "notes": notes }).to_string();
            Ok(Self { inner: Arc::new(Mutex::new(tr)), extra })
        })
    }

    /// Loads a checkpoint directory written by `save`.
    #[napi(factory, catch_unwind)]
    pub fn load(dir: String, device: String) -> Result<Self> {
        guarded("NativeTrainer.load", || {
            let dev = device::parse_device(&device)?;
            let (tr, extra) = checkpoint::load(&PathBuf::from(dir), &dev)?;
            Ok(Self { inner: Arc::new(Mutex::new(tr)), extra: extra.to_string() })
        })
    }

    /// One SADM step on a batch: x0 is batch·C·H·W floats in [-1, 1] (NCHW), labels are class indices.
    #[napi(catch_unwind, ts_return_type = "Promise<StepStats>")]
    pub fn step(&self, x0: Float32Array, labels: Int32Array, opts: StepOptions) -> AsyncTask<StepTask> {
        AsyncTask::new(StepTask { inner: self.inner.clone(), x0: x0.to_vec(), labels: labels.to_vec(), opts: Some(opts) })
    }

    /// Samples one image per label from the EMA weights; resolves with n·C·H·W floats (NCHW). `progress` counts
    /// the network evaluations as they are done.
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array>")]
    pub fn sample(&self, labels: Int32Array, opts: SampleOptions, progress: Option<&SampleProgress>) -> AsyncTask<SampleTask> {
        let progress = progress.map(|p| p.evaluations.clone());
        AsyncTask::new(SampleTask { source: Source::Trainer(self.inner.clone()), labels: labels.to_vec(), opts, progress })
    }

    /// Writes a complete checkpoint directory atomically; `extraJson` is stored as state.json's `extra`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn save(&self, dir: String, extra_json: String) -> AsyncTask<SaveTask> {
        AsyncTask::new(SaveTask { inner: self.inner.clone(), dir: PathBuf::from(dir), extra: extra_json })
    }

    #[napi(getter, catch_unwind)]
    pub fn step_count(&self) -> Result<f64> {
        guarded("stepCount", || Ok(lock(&self.inner)?.step_count() as f64))
    }

    /// The CoreConfig JSON this trainer runs with.
    #[napi(catch_unwind)]
    pub fn config_json(&self) -> Result<String> {
        guarded("configJson", || Ok(serde_json::to_string(lock(&self.inner)?.config()).expect("config serialises")))
    }

    /// The `extra` of the checkpoint this trainer was loaded from ("{}" when fresh).
    #[napi]
    pub fn extra_json(&self) -> String {
        self.extra.clone()
    }

    /// Replaces the discriminator's settings (a DiscriminatorConfig JSON), e.g. to continue a run with another
    /// kernel or pair weighting. A new architecture starts a fresh encoder; the returned note says so (null when
    /// the encoder is kept).
    #[napi(catch_unwind)]
    pub fn set_discriminator(&self, discriminator_json: String) -> Result<Option<String>> {
        guarded("setDiscriminator", || {
            let d = serde_json::from_str(&discriminator_json).map_err(|e| sadm_core::Error::Config(format!("discriminator: {e}")))?;
            lock(&self.inner)?.set_discriminator(d)
        })
    }

    /// Names of the DiT parameters the optimizer updates (all of them unless `trainable` restricts it).
    #[napi(catch_unwind)]
    pub fn trainable_names(&self) -> Result<Vec<String>> {
        guarded("trainableNames", || Ok(lock(&self.inner)?.trainable_names()))
    }

    #[napi(catch_unwind)]
    pub fn param_counts(&self) -> Result<ParamCounts> {
        guarded("paramCounts", || {
            let (dit, disc) = lock(&self.inner)?.num_params();
            Ok(ParamCounts { dit: dit as f64, discriminator: disc as f64 })
        })
    }
}

/// A trained DiT for sampling only (the EMA weights of a checkpoint by default).
#[napi]
pub struct NativeModel {
    cfg: CoreConfig,
    weights: Arc<HashMap<String, Tensor>>,
    device: Device,
}

#[napi]
impl NativeModel {
    #[napi(factory, catch_unwind)]
    pub fn load(dir: String, device: String, use_ema: bool) -> Result<Self> {
        guarded("NativeModel.load", || {
            let dev = device::parse_device(&device)?;
            let (cfg, weights) = checkpoint::load_weights(&PathBuf::from(dir), &dev, use_ema)?;
            Ok(Self { cfg, weights: Arc::new(weights), device: dev })
        })
    }

    /// A DiT weights file (`torch.save`'s `.pt`/`.pth`, or safetensors, in the reference names, e.g. the published
    /// `DiT-XL-2-256x256.pt`), its architecture read from the tensors and DiT's diffusion settings with it.
    /// `numHeads` is needed only for a width that is no reference DiT size.
    #[napi(factory, catch_unwind)]
    pub fn from_weights(path: String, device: String, num_heads: Option<u32>) -> Result<Self> {
        guarded("NativeModel.fromWeights", || {
            let dev = device::parse_device(&device)?;
            let (cfg, w) = weights::load_dit_weights(&PathBuf::from(path), num_heads.map(|h| h as usize), &dev)?;
            Ok(Self { cfg, weights: Arc::new(w), device: dev })
        })
    }

    /// Samples one image per label; resolves with n·C·H·W floats (NCHW). `progress` counts the network evaluations
    /// as they are done.
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array>")]
    pub fn sample(&self, labels: Int32Array, opts: SampleOptions, progress: Option<&SampleProgress>) -> AsyncTask<SampleTask> {
        let source = Source::Weights(self.cfg.clone(), self.weights.clone(), self.device.clone());
        let progress = progress.map(|p| p.evaluations.clone());
        AsyncTask::new(SampleTask { source, labels: labels.to_vec(), opts, progress })
    }

    #[napi]
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.cfg).expect("config serialises")
    }
}

/// The DiT architecture of a weights file, read from its tensors: `{ model, preset }` (`preset` is the reference
/// name, e.g. "DiT-XL/2", or null). `numHeads` is needed only for a width that is no reference DiT size.
#[napi(catch_unwind)]
pub fn inspect_weights(path: String, num_heads: Option<u32>) -> Result<String> {
    guarded("inspectWeights", || {
        let p = PathBuf::from(path);
        let tensors = checkpoint::load_pretrained(&p, &Device::Cpu)?;
        let hints = sadm_core::model::dit::ConfigHints { input_size: None, num_heads: num_heads.map(|h| h as usize) };
        let arch = weights::infer_architecture(&tensors, &p, hints)?;
        Ok(serde_json::json!({ "model": arch.model, "preset": arch.preset }).to_string())
    })
}

/// Version, compiled features and usable devices of this binary.
#[napi(catch_unwind)]
pub fn build_info() -> BuildInfo {
    BuildInfo { version: env!("CARGO_PKG_VERSION").into(), features: device::build_features(), devices: device::available_devices() }
}

pub struct StepTask {
    inner: Arc<Mutex<Trainer>>,
    x0: Vec<f32>,
    labels: Vec<i32>,
    opts: Option<StepOptions>,
}

impl Task for StepTask {
    type Output = train::StepStats;
    type JsValue = StepStats;

    fn compute(&mut self) -> Result<Self::Output> {
        let o = self.opts.take().expect("a task computes once");
        let p = train::StepParams { lambda: o.lambda, lr: o.lr, disc_lr: o.disc_lr, ema_decay: o.ema_decay, update_disc: o.update_disc };
        guarded("step", || lock(&self.inner)?.step(&self.x0, &self.labels, &p))
    }

    fn resolve(&mut self, _env: Env, s: Self::Output) -> Result<Self::JsValue> {
        Ok(StepStats {
            step: s.step as f64,
            loss: s.loss,
            mse: s.mse,
            vb: s.vb,
            structure: s.structure,
            disc_loss: s.disc_loss,
            grad_norm_dit: s.grad_norm_dit,
            grad_norm_disc: s.grad_norm_disc,
            skipped: s.skipped,
        })
    }
}

pub enum Source {
    Trainer(Arc<Mutex<Trainer>>),
    Weights(CoreConfig, Arc<HashMap<String, Tensor>>, Device),
}

pub struct SampleTask {
    source: Source,
    labels: Vec<i32>,
    opts: SampleOptions,
    progress: Option<Arc<AtomicUsize>>,
}

impl Task for SampleTask {
    type Output = Vec<f32>;
    type JsValue = Float32Array;

    fn compute(&mut self) -> Result<Self::Output> {
        guarded("sample", || {
            let images = match &self.source {
                Source::Trainer(t) => {
                    let t = lock(t)?;
                    t.sample(&self.labels, &core_sample_options(&self.opts, t.config().diffusion.num_timesteps, self.progress.clone())?, true)?
                }
                Source::Weights(cfg, w, dev) => {
                    let opts = core_sample_options(&self.opts, cfg.diffusion.num_timesteps, self.progress.clone())?;
                    train::sample_with(cfg, (**w).clone(), dev, &self.labels, &opts)?
                }
            };
            to_vec(&images)
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(Float32Array::new(output))
    }
}

pub struct SaveTask {
    inner: Arc<Mutex<Trainer>>,
    dir: PathBuf,
    extra: String,
}

impl Task for SaveTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        guarded("save", || {
            let extra: serde_json::Value =
                serde_json::from_str(&self.extra).map_err(|e| sadm_core::Error::Input(format!("extraJson is not valid JSON: {e}")))?;
            checkpoint::save(&*lock(&self.inner)?, &self.dir, extra)
        })
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> Result<()> {
        Ok(())
    }
}

#[napi(object)]
pub struct FeatureMetrics {
    /// Fréchet distance.
    pub fd: f64,
    /// KID mean and standard deviation over subsets.
    pub kid: f64,
    pub kid_std: f64,
    pub precision: f64,
    pub recall: f64,
}

/// Compares two feature sets (rows of `dim` floats), off the JS thread: Fréchet distance, KID (100 subsets of up
/// to 1,000 rows, seeded) and k-NN precision/recall with k = 3.
#[napi(catch_unwind, ts_return_type = "Promise<FeatureMetrics>")]
pub fn feature_metrics(real: Float64Array, generated: Float64Array, dim: f64) -> AsyncTask<MetricsTask> {
    AsyncTask::new(MetricsTask { real: real.to_vec(), generated: generated.to_vec(), dim })
}

pub struct MetricsTask {
    real: Vec<f64>,
    generated: Vec<f64>,
    dim: f64,
}

impl Task for MetricsTask {
    type Output = metrics::Report;
    type JsValue = FeatureMetrics;

    fn compute(&mut self) -> Result<Self::Output> {
        guarded("featureMetrics", || {
            let dim = check_integer("featureMetrics: dim", self.dim, 1, u32::MAX as u64)? as usize;
            metrics::report(&self.real, &self.generated, dim, 100, 1000, 3)
        })
    }

    fn resolve(&mut self, _env: Env, r: Self::Output) -> Result<Self::JsValue> {
        Ok(FeatureMetrics { fd: r.fd, kid: r.kid, kid_std: r.kid_std, precision: r.precision, recall: r.recall })
    }
}

/// Features and predicted classes of a set of images.
#[napi(object)]
pub struct Extracted {
    /// n × dim features, row-major.
    pub features: Float32Array,
    pub predictions: Int32Array,
    pub dim: u32,
}

/// A feature extractor for the metrics: a named architecture with weights from a safetensors file.
#[napi]
pub struct NativeExtractor {
    inner: Arc<Extractor>,
}

#[napi]
impl NativeExtractor {
    /// Loads `arch` ("lenet-mnist" or "inception-v3-fid") from a safetensors file.
    #[napi(factory, catch_unwind)]
    pub fn load(arch: String, weights: String, device: String) -> Result<Self> {
        guarded("NativeExtractor.load", || {
            let dev = device::parse_device(&device)?;
            Ok(Self { inner: Arc::new(Extractor::load(&arch, &PathBuf::from(weights), &dev)?) })
        })
    }

    #[napi(getter)]
    pub fn arch(&self) -> String {
        self.inner.arch().name().to_string()
    }

    #[napi(getter)]
    pub fn feature_dim(&self) -> u32 {
        self.inner.feature_dim() as u32
    }

    /// Classes the extractor predicts; 0 for a features-only network (then `predictions` is empty).
    #[napi(getter)]
    pub fn num_classes(&self) -> u32 {
        self.inner.num_classes() as u32
    }

    /// Throws unless the extractor reads images of `shape` = [channels, height, width].
    #[napi(catch_unwind)]
    pub fn check_input(&self, shape: Vec<u32>) -> Result<()> {
        guarded("NativeExtractor.checkInput", || self.inner.arch().check_input(image_shape(&shape)?))
    }

    /// Features and predicted classes of n images of `shape` = [channels, height, width] (n·C·H·W floats in
    /// [-1, 1]).
    #[napi(catch_unwind, ts_return_type = "Promise<Extracted>")]
    pub fn run(&self, images: Float32Array, shape: Vec<u32>) -> AsyncTask<ExtractTask> {
        AsyncTask::new(ExtractTask { inner: self.inner.clone(), images: images.to_vec(), shape })
    }
}

fn image_shape(shape: &[u32]) -> sadm_core::Result<(usize, usize, usize)> {
    match *shape {
        [c, h, w] => Ok((c as usize, h as usize, w as usize)),
        _ => Err(sadm_core::Error::Input(format!("an image shape is [channels, height, width], not {shape:?}"))),
    }
}

pub struct ExtractTask {
    inner: Arc<Extractor>,
    images: Vec<f32>,
    shape: Vec<u32>,
}

impl Task for ExtractTask {
    type Output = classifier::Extracted;
    type JsValue = Extracted;

    fn compute(&mut self) -> Result<Self::Output> {
        guarded("extract", || self.inner.run(&self.images, image_shape(&self.shape)?))
    }

    fn resolve(&mut self, _env: Env, out: Self::Output) -> Result<Self::JsValue> {
        let dim = self.inner.feature_dim() as u32;
        Ok(Extracted { features: Float32Array::new(out.features), predictions: Int32Array::new(out.predictions), dim })
    }
}

#[napi(object)]
pub struct ClassifierTraining {
    /// An integer ≥ 1.
    pub epochs: f64,
    /// An integer from 1 to the number of images.
    pub batch_size: f64,
    /// Greater than 0 and less than 1.
    pub lr: f64,
    /// An integer from 0 to `Number.MAX_SAFE_INTEGER`.
    pub seed: f64,
}

/// Trains a built-in extractor (`arch`: "lenet-mnist", on 1×28×28 images, the default; "lenet-emoji", on 3×32×32)
/// on n images and writes its weights (safetensors, atomically) to `out`. Resolves with the mean training loss of
/// each epoch.
#[napi(catch_unwind, ts_return_type = "Promise<number[]>")]
pub fn train_classifier(images: Float32Array, labels: Int32Array, opts: ClassifierTraining, out: String, arch: Option<String>) -> AsyncTask<TrainClassifierTask> {
    AsyncTask::new(TrainClassifierTask { arch, images: images.to_vec(), labels: labels.to_vec(), opts, out: PathBuf::from(out) })
}

pub struct TrainClassifierTask {
    arch: Option<String>,
    images: Vec<f32>,
    labels: Vec<i32>,
    opts: ClassifierTraining,
    out: PathBuf,
}

impl Task for TrainClassifierTask {
    type Output = Vec<f64>;
    type JsValue = Vec<f64>;

    fn compute(&mut self) -> Result<Self::Output> {
        guarded("trainClassifier", || {
            let o = &self.opts;
            let opts = LeNetTraining {
                epochs: check_integer("trainClassifier: epochs", o.epochs, 1, u32::MAX as u64)? as usize,
                batch_size: check_integer("trainClassifier: batchSize", o.batch_size, 1, u32::MAX as u64)? as usize,
                lr: o.lr,
                seed: check_integer("trainClassifier: seed", o.seed, 0, MAX_SAFE_INTEGER)?,
            };
            let mut losses = vec![];
            let arch = classifier::Arch::parse(self.arch.as_deref().unwrap_or("lenet-mnist"))?;
            let weights = classifier::train_lenet(arch, &self.images, &self.labels, &opts, &Device::Cpu, |_, l| losses.push(l))?;
            classifier::save_weights(&weights, &self.out)?;
            Ok(losses)
        })
    }

    fn resolve(&mut self, _env: Env, out: Self::Output) -> Result<Self::JsValue> {
        Ok(out)
    }
}

/// How `preprocessImage` makes a square training image.
#[napi(object)]
pub struct PreprocessOptions {
    /// Side of the square output in pixels, 1 to 8192.
    pub resolution: u32,
    /// "crop" (ADM's `center_crop_arr`, what DiT trains on: short side to `resolution`, centre crop), "pad" (long
    /// side to `resolution`, centred on `background`) or "stretch" (bicubic to the square, aspect ratio ignored).
    pub resize: String,
    /// Output channels: 1 (grey, Pillow's `convert("L")` of RGB input) or 3 (RGB; grey input is replicated).
    pub channels: u32,
    /// [r, g, b], each 0 to 255: the fill of "pad" (its luma for a grey output).
    pub background: Vec<u32>,
}

/// Resizes 8-bit pixels (`width` × `height`, `channels` 1 or 3 interleaved, rows top to bottom) to a square exactly
/// as Pillow does in DiT's data pipeline (box halving, bicubic, round-half-even sizes), off the JS thread. Resolves
/// with `opts.channels × resolution × resolution` bytes, channel-major (CHW).
#[napi(catch_unwind, ts_return_type = "Promise<Uint8Array>")]
pub fn preprocess_image(pixels: Uint8Array, width: u32, height: u32, channels: u32, opts: PreprocessOptions) -> AsyncTask<PreprocessTask> {
    AsyncTask::new(PreprocessTask { pixels: pixels.to_vec(), size: (width, height, channels), opts })
}

pub struct PreprocessTask {
    pixels: Vec<u8>,
    size: (u32, u32, u32),
    opts: PreprocessOptions,
}

fn preprocess_options(o: &PreprocessOptions) -> sadm_core::Result<sadm_core::data::preprocess::Preprocess> {
    use sadm_core::data::preprocess::{Preprocess, Resize};
    let background = match o.background[..] {
        [r, g, b] if r.max(g).max(b) <= 255 => [r as u8, g as u8, b as u8],
        _ => {
            return Err(sadm_core::Error::Input(format!(
                "background must be [r, g, b] with each 0 to 255 (got {:?})",
                o.background
            )))
        }
    };
    let resize = match o.resize.as_str() {
        "crop" => Resize::Crop,
        "pad" => Resize::Pad { background },
        "stretch" => Resize::Stretch,
        other => {
            return Err(sadm_core::Error::Input(format!(r#"resize must be "crop", "pad" or "stretch" (got "{other}")"#)))
        }
    };
    Ok(Preprocess { resolution: o.resolution as usize, resize, channels: o.channels as usize })
}

impl Task for PreprocessTask {
    type Output = Vec<u8>;
    type JsValue = Uint8Array;

    fn compute(&mut self) -> Result<Self::Output> {
        let pixels = std::mem::take(&mut self.pixels);
        let (w, h, c) = self.size;
        let run = || {
            let opts = preprocess_options(&self.opts)?;
            let image = sadm_core::data::resample::Image::new(w as usize, h as usize, c as usize, pixels)?;
            sadm_core::data::preprocess::preprocess(image, &opts)
        };
        // One-line errors that name the call: the loader reports them next to the file they came from.
        sadm_core::error::catch_panic("preprocessImage", || device::on_pool(run)).map_err(|e| match e {
            sadm_core::Error::Input(m) => Error::from_reason(format!("preprocessImage: {m}")),
            e => js_err(e),
        })
    }

    fn resolve(&mut self, _env: Env, out: Self::Output) -> Result<Self::JsValue> {
        Ok(Uint8Array::new(out))
    }
}

/// Reads an image file and makes it a square training image in one call, off the JS thread: PNG and JPEG are
/// decoded natively (transparency composited onto `opts.background` exactly as Pillow's `alpha_composite` does),
/// then resized as `preprocessImage` does. Resolves with the CHW bytes, or `null` when the file needs the general
/// decoder: another format, an ICC profile, an EXIF orientation, CMYK. Rejects with a one-line reason when the file
/// cannot be read or is a corrupt or truncated PNG or JPEG.
#[napi(catch_unwind, ts_return_type = "Promise<Uint8Array | null>")]
pub fn decode_image_file(path: String, opts: PreprocessOptions) -> AsyncTask<DecodeImageFileTask> {
    AsyncTask::new(DecodeImageFileTask { path: PathBuf::from(path), opts })
}

pub struct DecodeImageFileTask {
    path: PathBuf,
    opts: PreprocessOptions,
}

impl Task for DecodeImageFileTask {
    type Output = Option<Vec<u8>>;
    type JsValue = Option<Uint8Array>;

    fn compute(&mut self) -> Result<Self::Output> {
        let opts = preprocess_options(&self.opts).map_err(|e| match e {
            sadm_core::Error::Input(m) => Error::from_reason(format!("decodeImageFile: {m}")),
            e => js_err(e),
        })?;
        // Checked by preprocess_options.
        let background = [0, 1, 2].map(|c| self.opts.background[c] as u8);
        // Read here, on a libuv thread: a slow disk does not hold up the pool.
        let bytes = std::fs::read(&self.path).map_err(|e| js_err(sadm_core::Error::io("cannot read the file", e)))?;
        let run = || sadm_core::data::decode::decode_preprocessed(&bytes, background, &opts);
        // A bad file's reason, as the loader lists it next to the file's name.
        sadm_core::error::catch_panic("decodeImageFile", || device::on_pool(run)).map_err(|e| match e {
            sadm_core::Error::Input(m) => Error::from_reason(m),
            e => js_err(e),
        })
    }

    fn resolve(&mut self, _env: Env, out: Self::Output) -> Result<Self::JsValue> {
        Ok(out.map(Uint8Array::new))
    }
}

/// Stable Diffusion's VAE (diffusers' `AutoencoderKL`), inference only: images ↔ latents, one image at a time
/// through the network so a batch never holds more than one image's activations.
#[napi]
pub struct NativeVae {
    inner: Arc<AutoencoderKL>,
    files: Vec<String>,
}

#[napi]
impl NativeVae {
    /// Loads a diffusers VAE folder (`config.json` + `diffusion_pytorch_model.safetensors` or `.bin`) or a single
    /// weights file of Stable Diffusion's VAE (`.safetensors`, or a `torch.save` `.ckpt`/`.pt`/`.pth`/`.bin`).
    #[napi(factory, catch_unwind)]
    pub fn load(path: String, device: String) -> Result<Self> {
        guarded("NativeVae.load", || {
            let dev = device::parse_device(&device)?;
            let p = PathBuf::from(&path);
            let files = vae::source_files(&p)?.iter().map(|f| f.display().to_string()).collect();
            Ok(Self { inner: Arc::new(AutoencoderKL::load(&p, &dev)?), files })
        })
    }

    /// `{ latentChannels, scalingFactor, downsample, latentShift, latentMultiplier, files, config }`: the latents
    /// the diffusion model sees are `(z − latentShift[c]) · latentMultiplier[c]` of the posterior's z.
    #[napi]
    pub fn config_json(&self) -> String {
        let c = self.inner.config();
        let (shift, mult) = c.latent_affine();
        serde_json::json!({
            "latentChannels": c.latent_channels,
            "scalingFactor": c.scaling_factor,
            "downsample": c.downscale(),
            "latentShift": shift,
            "latentMultiplier": mult,
            "files": self.files,
            "config": c,
        })
        .to_string()
    }

    /// The posterior of n images of `shape` = [n, 3, H, W] in [-1, 1]: per image its mean then its log-variance
    /// (clamped to [-30, 20] as diffusers does), each [latentChannels, H/f, W/f], unscaled.
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array>")]
    pub fn encode(&self, images: Float32Array, shape: Vec<u32>) -> AsyncTask<VaeTask> {
        AsyncTask::new(VaeTask { inner: self.inner.clone(), input: images.to_vec(), shape, encode: true })
    }

    /// Images [n, 3, h·f, w·f] (about [-1, 1], unclamped) of the diffusion model's latents [n, C, h, w] (scaled).
    #[napi(catch_unwind, ts_return_type = "Promise<Float32Array>")]
    pub fn decode(&self, latents: Float32Array, shape: Vec<u32>) -> AsyncTask<VaeTask> {
        AsyncTask::new(VaeTask { inner: self.inner.clone(), input: latents.to_vec(), shape, encode: false })
    }
}

pub struct VaeTask {
    inner: Arc<AutoencoderKL>,
    input: Vec<f32>,
    shape: Vec<u32>,
    encode: bool,
}

impl VaeTask {
    fn run(&self) -> sadm_core::Result<Vec<f32>> {
        let dims: Vec<usize> = match *self.shape.as_slice() {
            [n, c, h, w] => vec![n as usize, c as usize, h as usize, w as usize],
            _ => return Err(sadm_core::Error::Input(format!("a batch shape is [n, channels, height, width], not {:?}", self.shape))),
        };
        if dims.iter().product::<usize>() != self.input.len() {
            return Err(sadm_core::Error::Input(format!("{} values do not make a batch of shape {:?}", self.input.len(), self.shape)));
        }
        let x = Tensor::from_slice(&self.input, dims.as_slice(), self.inner.device())?;
        let chunks = vae::Chunks::default();
        let out = if self.encode {
            let p = self.inner.encode(&x, &chunks)?;
            Tensor::cat(&[&p.mean, &p.logvar], 1)?
        } else {
            self.inner.decode_latents(&x, &chunks)?
        };
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }
}

impl Task for VaeTask {
    type Output = Vec<f32>;
    type JsValue = Float32Array;

    fn compute(&mut self) -> Result<Self::Output> {
        guarded(if self.encode { "NativeVae.encode" } else { "NativeVae.decode" }, || self.run())
    }

    fn resolve(&mut self, _env: Env, out: Self::Output) -> Result<Self::JsValue> {
        Ok(Float32Array::new(out))
    }
}
