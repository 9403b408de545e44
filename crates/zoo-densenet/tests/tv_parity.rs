//! torchvision's DenseNets against torchvision itself: weights from the formula shared with
//! `scripts/parity.py` (by torchvision's state-dict names), logits in eval mode and after a
//! training-mode forward compared with the values `scripts/tv_parity.py` recorded from
//! torchvision (`tests/fixtures/tv_densenet.json`), and tensor names and shapes equal to its
//! state dicts': as the FNV-1a digest of the sorted names and shapes for every network, and
//! for DenseNet-121 name by name, with the BatchNorm running statistics after the training pass
//! (the fixture lists only its 606 tensors: DenseNet-169's and -201's 1,852 would add 110 KB).

use candle_core::{DType, Device, Result};
use candle_nn::{ModuleT, VarBuilder};
use zoo_densenet::tv::{self, TvDenseNet};
use zoo_nn::fixture::TvFixture;
use zoo_nn::init::{InitScheme, ParamStore};
use zoo_nn::testing::{fill_by_formula, formula_input, max_relative_error, running_sums_error};

/// The logits of `build`'s network on the formula input in eval mode, then in train mode
/// (`drop_rate` 0: no dropout), its store filled by the formula.
fn run(
    build: impl FnOnce(VarBuilder) -> Result<TvDenseNet>,
    size: usize,
) -> Result<(ParamStore, Vec<f32>, Vec<f32>)> {
    let store = ParamStore::new(0, InitScheme::PytorchDefault, DType::F32, &Device::Cpu);
    let net = build(store.var_builder())?;
    fill_by_formula(&store);
    let x = formula_input(3, size);
    let eval = net.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?;
    let train = net.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((store, eval, train))
}

type Build = fn(usize, VarBuilder) -> Result<TvDenseNet>;

#[test]
fn every_torchvision_densenet_matches_torchvision_in_eval_and_train_mode() -> Result<()> {
    let fixture = TvFixture::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tv_densenet.json"
    ))?;
    let size = fixture.size();
    let builds: [(&str, Build); 3] = [
        ("densenet121", tv::densenet121),
        ("densenet169", tv::densenet169),
        ("densenet201", tv::densenet201),
    ];
    for (name, build) in builds {
        let want = fixture.model(name);
        let (store, eval, train) = run(|vb| build(10, vb), size)?;
        want.check_names(&store)?;
        let e = max_relative_error(&eval, &want.eval_logits());
        let t = max_relative_error(&train, &want.train_logits());
        let r = match want.running_sums() {
            Some(sums) => Some(running_sums_error(&store, &sums)?),
            None => None,
        };
        eprintln!("{name}: eval {e:e}, train {t:e}, running sums {r:?}");
        // Measured at 128 px against torch 2.15 and torchvision 0.29, with AVX-512 kernels:
        // eval 1.4e-7 to 4.0e-7; train 1.5e-5 (DenseNet-121, -201) and 2.2e-5 (-169), batch
        // statistics magnifying float rounding; DenseNet-121's running sums 4.0e-6. A wrong
        // layer is off by O(1).
        assert!(e < 1e-5, "{name}: eval logits differ by {e:e} (relative)");
        assert!(t < 1e-3, "{name}: train logits differ by {t:e} (relative)");
        assert!(
            r.is_none_or(|r| r < 1e-3),
            "{name}: running sums differ by {r:?} (relative)"
        );
    }
    Ok(())
}
