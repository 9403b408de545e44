//! Numerical parity with the notebook's PyTorch definitions, for every registry model:
//! weights from a formula shared with `scripts/parity.py`, logits in eval mode, logits and
//! BatchNorm running statistics after a training-mode forward, compared with PyTorch's
//! (`tests/fixtures/parity.json`, PyTorch 2.15); and `zoo convert` on a notebook `.pt`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use zoo_cli::registry::{Origin, registry};
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::testing::{
    fill_by_formula as fill, formula_input as input, max_relative_error as rel_error,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load_fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("parity.json"))
        .expect("tests/fixtures/parity.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn every_model_matches_pytorch_in_eval_and_train_mode() {
    let fixture = load_fixture();
    let mut report = Vec::new();
    // torchvision's networks are checked against torchvision in their crates' tv_parity tests.
    for entry in registry().iter().filter(|e| e.origin == Origin::Notebook) {
        let record = &fixture["models"][entry.name];
        assert!(!record.is_null(), "{}: no fixture", entry.name);
        let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
        let model = entry.build_reference(store.var_builder()).unwrap();
        fill(&store);
        let r = entry.reference_input;
        let x = input(r.channels, r.height);
        let eval: Vec<f32> = model
            .forward_t(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let err = rel_error(&eval, &floats(&record["eval_logits"]));
        assert!(
            err <= 1e-5,
            "{}: eval logits relative error {err}",
            entry.name
        );
        report.push(format!("{} eval {err:.1e}", entry.name));
        if let Some(train_logits) = record.get("train_logits") {
            let train: Vec<f32> = model
                .forward_t(&x, true)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let err = rel_error(&train, &floats(train_logits));
            assert!(
                err <= 1e-5,
                "{}: train logits relative error {err}",
                entry.name
            );
            let named: HashMap<String, Tensor> = store
                .named_tensors()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().clone()))
                .collect();
            let running = record["running"].as_object().unwrap();
            assert_eq!(
                running.len(),
                named.keys().filter(|k| k.contains("running_")).count()
            );
            for (name, want) in running {
                let t = &named[name];
                let sum = t.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
                let want_sum = want["sum"].as_f64().unwrap();
                assert!(
                    (sum - want_sum).abs() <= 1e-5 * want_sum.abs().max(1.0),
                    "{}: {name} sum {sum} vs {want_sum}",
                    entry.name
                );
                let head: Vec<f32> = t
                    .flatten_all()
                    .unwrap()
                    .narrow(0, 0, 8.min(t.elem_count()))
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(
                    rel_error(&head, &floats(&want["head"])) <= 1e-5,
                    "{}: {name} head {head:?}",
                    entry.name
                );
            }
            report.push(format!(
                "{} train {err:.1e} ({} running tensors)",
                entry.name,
                running.len()
            ));
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn a_notebook_pt_converts_and_predicts_like_pytorch() {
    let fixture = load_fixture();
    let dir = zoo_core::testing::scratch_dir("parity");
    // The notebook's DataParallel state dict (`module.model.0.0.weight`, ...).
    let pt = fixtures().join("cifar_densenet.pt");
    let converted = dir.join("densenet.safetensors");
    zoo_cli::convert::import("densenet", &pt, &converted).unwrap();
    let loaded = zoo_cli::loaded_model::load_model(&converted, "cpu").unwrap();
    assert_eq!(loaded.meta.run.eval_transform.mean, vec![0.5; 3]);
    assert_eq!(loaded.meta.run.classes[0], "airplane");
    let logits: Vec<f32> = loaded
        .model
        .forward_t(&input(3, 224), false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let err = rel_error(
        &logits,
        &floats(&fixture["models"]["densenet"]["eval_logits"]),
    );
    assert!(err <= 1e-5, "converted .pt: relative error {err}");

    // zoo -> PyTorch -> zoo is exact, and the PyTorch side has the notebook's keys.
    let exported = dir.join("densenet-pytorch.safetensors");
    zoo_cli::convert::export(&converted, &exported).unwrap();
    let torch_side = candle_core::safetensors::load(&exported, &Device::Cpu).unwrap();
    assert!(torch_side.contains_key("model.0.1.num_batches_tracked"));
    assert!(torch_side.contains_key("model.1.net.0.2.weight"));
    let back = dir.join("densenet-back.safetensors");
    zoo_cli::convert::import("densenet", &exported, &back).unwrap();
    let a = zoo_core::train::checkpoint::load_checkpoint(&converted, &Device::Cpu).unwrap();
    let b = zoo_core::train::checkpoint::load_checkpoint(&back, &Device::Cpu).unwrap();
    assert_eq!(a.model.len(), b.model.len());
    for (name, t) in &a.model {
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.model[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            "{name}"
        );
    }

    // The wrong model: every mismatch listed, by tensor, with both shapes.
    let err = format!(
        "{:#}",
        zoo_cli::convert::import("resnet18", &pt, &dir.join("x.safetensors")).unwrap_err()
    );
    assert!(err.contains("does not fit this model"), "{err}");
    assert!(
        err.contains("tensor `0.0.weight`") || err.contains("missing tensor `1.0.conv1.weight`"),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor `1.net.0.2.weight`"),
        "{err}"
    );
}

/// A zoo model's weights in the PyTorch layout (`model.<name>` keys), with `metadata`.
fn pytorch_file(
    model: &str,
    side: usize,
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> usize {
    let entry = zoo_cli::registry::find(model).unwrap();
    let store = ParamStore::new(1, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
    let spec = zoo_core::InputSpec::square(entry.reference_input.channels, side);
    entry.build(spec, 10, store.var_builder()).unwrap();
    let tensors: Vec<(String, Tensor)> = store
        .named_tensors()
        .into_iter()
        .map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone()))
        .collect();
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), metadata).unwrap();
    std::fs::write(path, bytes).unwrap();
    store.named_tensors().len()
}

#[test]
fn convert_takes_the_input_size_the_weights_imply_and_the_transform_it_is_given() {
    use zoo_cli::convert::{ImportOptions, import, import_with};
    use zoo_core::train::checkpoint::load_checkpoint;
    let dir = zoo_core::testing::scratch_dir("convert");
    let out = dir.join("out.safetensors");
    let meta = |path: &Path| load_checkpoint(path, &Device::Cpu).unwrap().meta;

    // AlexNet trained at 65 px: its first Linear takes 256 inputs, which only small inputs give.
    let alexnet = dir.join("alexnet65.safetensors");
    pytorch_file("alexnet", 65, &alexnet, None);
    import("alexnet", &alexnet, &out).unwrap();
    let m = meta(&out);
    assert_eq!((m.run.input.height, m.run.eval_transform.height), (65, 65));
    let err = format!(
        "{:#}",
        import_with(
            "alexnet",
            &alexnet,
            &out,
            &ImportOptions {
                input_size: Some(224),
                ..Default::default()
            }
        )
        .unwrap_err()
    );
    assert!(
        err.contains("--input-size 224 contradicts the weights")
            && err.contains("`14.weight` takes 256 inputs"),
        "{err}"
    );

    // ResNet-18 (global pooling: no size implied): the flags, or the file's metadata.
    let resnet = dir.join("resnet32.safetensors");
    pytorch_file("resnet18", 32, &resnet, None);
    let classes: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    import_with(
        "resnet18",
        &resnet,
        &out,
        &ImportOptions {
            input_size: Some(32),
            mean: Some(vec![0.49, 0.48, 0.45]),
            std: Some(vec![0.25, 0.24, 0.26]),
            classes: Some(classes.clone()),
        },
    )
    .unwrap();
    let m = meta(&out);
    assert_eq!(m.run.eval_transform.height, 32);
    assert_eq!(m.run.eval_transform.mean, vec![0.49, 0.48, 0.45]);
    assert_eq!(m.run.classes, classes);
    let tagged = dir.join("resnet-tagged.safetensors");
    let metadata = HashMap::from([
        ("input_size".to_string(), "40".to_string()),
        ("mean".to_string(), "0.4,0.4,0.4".to_string()),
        ("std".to_string(), "0.2,0.2,0.2".to_string()),
        ("classes".to_string(), classes.join(",")),
    ]);
    pytorch_file("resnet18", 32, &tagged, Some(metadata));
    import("resnet18", &tagged, &out).unwrap();
    let m = meta(&out);
    assert_eq!(
        (
            m.run.eval_transform.height,
            m.run.eval_transform.std.clone()
        ),
        (40, vec![0.2; 3])
    );
    assert_eq!(m.run.classes, classes);
    // A zero std, or three class names for a ten-class head, are refused.
    let bad = |options: ImportOptions| {
        format!(
            "{:#}",
            import_with("resnet18", &resnet, &out, &options).unwrap_err()
        )
    };
    let err = bad(ImportOptions {
        std: Some(vec![0.0, 0.2, 0.2]),
        ..Default::default()
    });
    assert!(err.contains("std") && err.contains("above 0"), "{err}");
    let err = bad(ImportOptions {
        classes: Some(vec!["a".into(), "b".into(), "c".into()]),
        ..Default::default()
    });
    assert!(err.contains("with 3 classes"), "{err}");
}
