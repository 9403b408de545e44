//! torchvision's AlexNet against torchvision itself: weights from the formula shared with
//! `scripts/parity.py` (by torchvision's state-dict names), logits in eval and train mode
//! compared with the values `scripts/tv_parity.py` recorded from torchvision
//! (`tests/fixtures/tv_alexnet.json`), and tensor names and shapes equal to its state dict's.

use candle_core::{DType, Device, Result};
use candle_nn::ModuleT;
use serde_json::Value;
use zoo_alexnet::tv::{self, TvAlexNet, TvAlexNetConfig};
use zoo_nn::init::{InitScheme, ParamStore};
use zoo_nn::testing::{
    check_state_dict, fill_by_formula, formula_input, max_relative_error, state_dict_digest,
};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tv_alexnet.json"
    );
    let text = std::fs::read_to_string(path).expect("tests/fixtures/tv_alexnet.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    let values = v.as_array().expect("an array").iter();
    values
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// The fixture's tree of module paths as (dotted name, shape) pairs.
fn flatten(prefix: &str, tree: &Value, out: &mut Vec<(String, Vec<usize>)>) {
    for (key, node) in tree.as_object().expect("a module") {
        let name = format!("{prefix}{key}");
        match node.as_array() {
            Some(dims) => out.push((
                name,
                dims.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            )),
            None => flatten(&format!("{name}."), node, out),
        }
    }
}

/// An empty store; the network built on it is then filled by [`fill_by_formula`].
fn store() -> ParamStore {
    ParamStore::new(0, InitScheme::PytorchDefault, DType::F32, &Device::Cpu)
}

fn logits(net: &TvAlexNet, size: usize, train: bool) -> Result<Vec<f32>> {
    let x = formula_input(3, size);
    net.forward_t(&x, train)?.flatten_all()?.to_vec1::<f32>()
}

#[test]
fn torchvisions_alexnet_matches_torchvision_in_eval_and_train_mode() -> Result<()> {
    let fixture = fixture();
    let size = fixture["size"].as_u64().expect("size") as usize;
    let want = &fixture["models"]["alexnet"];

    let eval_store = store();
    let net = tv::alexnet(10, eval_store.var_builder())?;
    fill_by_formula(&eval_store);
    let mut names = Vec::new();
    flatten("", &want["state_dict"], &mut names);
    check_state_dict(&eval_store, &names)?;
    let digest = &want["state_dict_digest"];
    let (count, fnv) = state_dict_digest(&eval_store);
    assert_eq!(count as u64, digest["tensors"].as_u64().expect("a count"));
    assert_eq!(
        format!("{fnv:016x}"),
        digest["fnv1a"].as_str().expect("a digest")
    );
    let e = max_relative_error(&logits(&net, size, false)?, &floats(&want["eval_logits"]));

    // Training mode with torchvision's Dropout modules left in evaluation: dropout 0 here.
    let train_store = store();
    let config = TvAlexNetConfig::alexnet()
        .with_num_classes(10)
        .with_dropout(0.0);
    let net = TvAlexNet::new(&config, train_store.var_builder())?;
    fill_by_formula(&train_store);
    let t = max_relative_error(&logits(&net, size, true)?, &floats(&want["train_logits"]));
    eprintln!("alexnet: eval {e:e}, train {t:e}");
    // 1.2e-6 measured in both modes at 128 px (torch 2.15, torchvision 0.29; AlexNet has no
    // BatchNorm, so the two differ only in dropout, off here).
    assert!(e < 1e-5, "eval logits differ by {e:e} (relative)");
    assert!(t < 1e-5, "train logits differ by {t:e} (relative)");
    Ok(())
}
