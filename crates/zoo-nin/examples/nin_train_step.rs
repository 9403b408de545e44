//! Build NiN, run it on a batch, take one SGD step and save the weights.
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, Optimizer, SGD, VarBuilder, VarMap, loss};

fn main() -> candle_core::Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = zoo_nin::nin(10, vb)?;
    let images = Tensor::randn(0f32, 1.0, (2, 3, 96, 96), &Device::Cpu)?;
    let labels = Tensor::new(&[0u32, 1], &Device::Cpu)?;
    let loss = loss::cross_entropy(&model.forward_t(&images, true)?, &labels)?;
    SGD::new(varmap.all_vars(), 0.01)?.backward_step(&loss)?;
    varmap.save(std::env::temp_dir().join("zoo-nin-example.safetensors"))?;
    println!("loss {:.4}", loss.to_scalar::<f32>()?);
    Ok(())
}
