use candle_core::{Device, Tensor};
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (n, c, h, k, s, iters) = (args[0], args[1], args[2], args[3], args[4], args[5]);
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (n, c, h, h), &dev).unwrap();
    let w = Tensor::randn(0f32, 1., (c, 1, k, k), &dev).unwrap();
    let aff = Tensor::randn(0f32, 1., (2, c), &dev).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..iters {
        let y = fairnas_ops::depthwise_affine_act(&x, &w, &aff, s, fairnas_ops::Padding2d::symmetric(k), fairnas_ops::Activation::Relu6).unwrap();
        drop(y);
    }
    let dt = t.elapsed().as_secs_f64() / iters as f64;
    let outs = (n * c * (h / s) * (h / s)) as f64;
    println!("{:.3} ms/iter, {:.2} ns/output", dt * 1e3, dt * 1e9 / outs);
}
