//! torchvision's GoogLeNet (`googlenet(num_classes=10, aux_logits=False, transform_input=True,
//! init_weights=False)`) against torchvision itself: weights from the formula shared with
//! `scripts/parity.py` (by torchvision's state-dict names), logits in eval mode, logits and
//! BatchNorm running statistics after a training-mode forward, compared with the values
//! `scripts/tv_parity.py` recorded from torchvision (`tests/fixtures/tv_googlenet.json`), and
//! tensor names and shapes equal to its state dict's.

use candle_core::{DType, Device, Result};
use candle_nn::{ModuleT, VarBuilder};
use zoo_googlenet::tv::{self, TvGoogLeNet};
use zoo_nn::fixture::TvFixture;
use zoo_nn::init::{InitScheme, ParamStore};
use zoo_nn::testing::{fill_by_formula, formula_input, max_relative_error, running_sums_error};

/// The logits of `build`'s network on the formula input in eval mode, then those of the same
/// network with dropout 0 in train mode (torchvision's Dropout modules stay in evaluation in the
/// recorded training pass), both sharing the tensors of one store filled by the formula.
fn run(
    build: impl FnOnce(VarBuilder) -> Result<TvGoogLeNet>,
    size: usize,
) -> Result<(ParamStore, Vec<f32>, Vec<f32>)> {
    let store = ParamStore::new(0, InitScheme::PytorchDefault, DType::F32, &Device::Cpu);
    let net = build(store.var_builder())?;
    fill_by_formula(&store);
    let x = formula_input(3, size);
    let eval = net.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?;
    let config = net.config().clone().with_dropout(0.0);
    let shared = VarBuilder::from_varmap(store.varmap(), DType::F32, &Device::Cpu);
    let net = TvGoogLeNet::new(&config, shared)?;
    let train = net.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((store, eval, train))
}

#[test]
fn torchvisions_googlenet_matches_torchvision_in_eval_and_train_mode() -> Result<()> {
    let fixture = TvFixture::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tv_googlenet.json"
    ))?;
    let want = fixture.model("googlenet");
    let (store, eval, train) = run(|vb| tv::googlenet(10, vb), fixture.size())?;
    want.check_names(&store)?;
    let e = max_relative_error(&eval, &want.eval_logits());
    let t = max_relative_error(&train, &want.train_logits());
    let sums = want.running_sums().expect("running sums");
    let r = running_sums_error(&store, &sums)?;
    eprintln!("googlenet: eval {e:e}, train {t:e}, running sums {r:e}");
    // Measured at 100 px (ceil-mode poolings round 50 and 12 up) against torch 2.15 and
    // torchvision 0.29, with AVX-512 kernels: eval 4.0e-7; train 2.5e-5 and running sums 2.8e-5,
    // batch statistics magnifying float rounding. A wrong layer is off by O(1).
    assert!(e < 1e-5, "eval logits differ by {e:e} (relative)");
    assert!(t < 1e-3, "train logits differ by {t:e} (relative)");
    assert!(r < 1e-3, "running sums differ by {r:e} (relative)");
    Ok(())
}
