use sadm_core::candle::{DType, Device, Tensor};
use sadm_core::diffusion::GaussianDiffusion;
use sadm_core::dit::DiT;
fn main() -> sadm_core::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let dev = Device::Cpu;
    let raw = std::fs::read("/tmp/batch.f32").unwrap();
    let x: Vec<f32> = raw.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let lr = std::fs::read("/tmp/labels.i32").unwrap();
    let y: Vec<u32> = lr.chunks(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32).collect();
    let n = y.len();
    let x0 = Tensor::from_vec(x, (n, 1, 28, 28), &dev)?;
    for use_ema in [true, false] {
        let (cfg, w) = sadm_core::checkpoint::load_weights(std::path::Path::new(&a[1]), &dev, use_ema)?;
        let dit = DiT::new(&cfg.model, candle_nn_vb(w, &dev))?;
        let d = GaussianDiffusion::new(&cfg.diffusion);
        let mut out_imgs = vec![];
        for t in [20usize, 100, 300, 500, 800] {
            let ts = vec![t; n];
            let noise = sadm_core::rng::Rng::new(1).randn(&[n, 1, 28, 28], &dev)?;
            let xt = d.q_sample(&x0, &ts, &noise)?;
            let tt = Tensor::new(vec![t as f32; n], &dev)?;
            let out = dit.forward(&xt, &tt, Some(&Tensor::new(y.clone(), &dev)?))?;
            let eps = out.narrow(1, 0, 1)?;
            let mse = (&eps - &noise)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
            println!("ema={use_ema} t={t} mse={mse:.4}");
            out_imgs.push(d.predict_x0(&xt, &ts, &eps)?.clamp(-1f32, 1f32)?);
        }
        let all = Tensor::cat(&out_imgs, 0)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = all.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(format!("/tmp/x0hat-{use_ema}.f32"), bytes).unwrap();
    }
    Ok(())
}
fn candle_nn_vb(w: std::collections::HashMap<String, Tensor>, dev: &Device) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_tensors(w, DType::F32, dev)
}
