//! torchvision's AlexNet against torchvision itself: weights from the formula shared with
//! `scripts/parity.py` (by torchvision's state-dict names), logits in eval and train mode
//! compared with the values `scripts/tv_parity.py` recorded from torchvision
//! (`tests/fixtures/tv_alexnet.json`), and tensor names and shapes equal to its state dict's.

use candle_core::{DType, Device, Result};
use candle_nn::{ModuleT, VarBuilder};
use zoo_alexnet::tv::{self, TvAlexNet};
use zoo_nn::fixture::TvFixture;
use zoo_nn::init::{InitScheme, ParamStore};
use zoo_nn::testing::{fill_by_formula, formula_input, max_relative_error};

/// The logits of torchvision's AlexNet (10 classes) on the formula input in eval mode, then
/// those of the same network with dropout 0 in train mode (torchvision's Dropout modules stay in
/// evaluation in the recorded training pass), both sharing the tensors of one store filled by
/// the formula.
fn run(size: usize) -> Result<(ParamStore, Vec<f32>, Vec<f32>)> {
    let store = ParamStore::new(0, InitScheme::PytorchDefault, DType::F32, &Device::Cpu);
    let net = tv::alexnet(10, store.var_builder())?;
    fill_by_formula(&store);
    let x = formula_input(3, size);
    let eval = net.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?;
    let config = net.config().clone().with_dropout(0.0);
    let shared = VarBuilder::from_varmap(store.varmap(), DType::F32, &Device::Cpu);
    let net = TvAlexNet::new(&config, shared)?;
    let train = net.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((store, eval, train))
}

#[test]
fn torchvisions_alexnet_matches_torchvision_in_eval_and_train_mode() -> Result<()> {
    let fixture = TvFixture::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tv_alexnet.json"
    ))?;
    let want = fixture.model("alexnet");
    let (store, eval, train) = run(fixture.size())?;
    want.check_names(&store)?;
    let e = max_relative_error(&eval, &want.eval_logits());
    let t = max_relative_error(&train, &want.train_logits());
    eprintln!("alexnet: eval {e:e}, train {t:e}");
    // 1.2e-6 measured in both modes at 128 px against torch 2.15 and torchvision 0.29 (AlexNet
    // has no BatchNorm: the two modes differ only in dropout, off here).
    assert!(e < 1e-5, "eval logits differ by {e:e} (relative)");
    assert!(t < 1e-5, "train logits differ by {t:e} (relative)");
    Ok(())
}
