//! ONNX export checked by an independent runtime: every registry model, seeded weights (and
//! random BatchNorm statistics, so that evaluation-mode BatchNorm is not the identity),
//! exported by `zoo_cli::onnx` and run by tract at batch 1 and 3; its logits must equal zoo's
//! evaluation-mode logits within 1e-5 relative. Also the file's contract (names, opset,
//! metadata) and what is refused.

use candle_core::{DType, Device, Tensor};
use tract_onnx::prelude::{Datum, Framework, InferenceFact, InferenceModelExt, IntoRunnable, tvec};
use zoo_cli::registry::{ModelEntry, Origin, registry};
use zoo_core::InputSpec;
use zoo_core::data::transforms::InputTransform;
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::train::checkpoint::{CheckpointMeta, RunInfo};

/// The side each model is exported at: small where the network allows it (tract runs the
/// file in the test), 224 px for torchvision's AlexNet and VGG, whose adaptive pooling ONNX
/// can express only where the map is a multiple of its output (7x7 or 6x6 at 224 px).
fn export_side(entry: &ModelEntry) -> usize {
    let adaptive = [
        "tv-alexnet",
        "tv-vgg11",
        "tv-vgg11-bn",
        "tv-vgg16",
        "tv-vgg16-bn",
    ];
    if adaptive.contains(&entry.name) {
        224
    } else if entry.origin == Origin::Torchvision {
        64
    } else {
        entry.cpu_input_size()
    }
}

/// `entry` at `side` with seeded weights and random running statistics, and its metadata.
fn seeded(entry: &ModelEntry, side: usize) -> (Box<dyn zoo_core::Model>, CheckpointMeta) {
    let input = InputSpec::square(entry.reference_input.channels, side);
    let store = ParamStore::new(11, InitScheme::PytorchDefault, DType::F32, &Device::Cpu);
    let model = entry.build(input, 10, store.var_builder()).unwrap();
    for (name, var) in store.named_tensors() {
        let t = var.as_tensor();
        if name.ends_with("running_var") {
            var.set(&t.rand_like(0.5, 1.5).unwrap()).unwrap();
        } else if name.ends_with("running_mean") {
            var.set(&t.randn_like(0.0, 0.2).unwrap()).unwrap();
        }
    }
    let classes = (0..10).map(|i| format!("class {i}")).collect();
    let transform = InputTransform::notebook(input.channels, side);
    let meta = CheckpointMeta::new(RunInfo::new(
        entry.name,
        input,
        classes,
        transform,
        String::new(),
        0,
    ));
    (model, meta)
}

/// tract's logits for `x` through the ONNX file `bytes`.
fn tract_logits(bytes: &[u8], x: &Tensor) -> Vec<f32> {
    let dims = x.dims().to_vec();
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims.clone()))
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let data = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let input = tract_onnx::prelude::Tensor::from_shape(&dims, &data).unwrap();
    let out = model.run(tvec!(input.into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[test]
fn every_model_exports_and_tract_gives_zoos_logits_at_batch_1_and_3() {
    let mut report = Vec::new();
    for entry in registry() {
        let side = export_side(entry);
        let (model, meta) = seeded(entry, side);
        let bytes = zoo_cli::onnx::onnx_bytes(model.as_ref(), &meta)
            .unwrap_or_else(|e| panic!("{}: {e:#}", entry.name));
        let mut worst = 0f32;
        for batch in [1, 3] {
            let c = entry.reference_input.channels;
            let x = zoo_core::testing::test_input(&[batch, c, side, side], 5).unwrap();
            let want = zoo_core::grad::no_grad(|| model.forward_t(&x, false)).unwrap();
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                spread > 1e-3,
                "{}: logits {want:?} carry no signal",
                entry.name
            );
            let got = tract_logits(&bytes, &x);
            assert_eq!(got.len(), batch * 10, "{}", entry.name);
            let e = zoo_core::testing::max_relative_error(&got, &want);
            assert!(
                e <= 1e-5,
                "{} at {side} px, batch {batch}: {e:e}",
                entry.name
            );
            worst = worst.max(e);
        }
        report.push(format!("{} {side} px {worst:.1e}", entry.name));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn the_file_names_its_input_output_weights_and_preprocessing() {
    use onnx_protobuf::Message;
    let entry = zoo_cli::find("tv-resnet18").unwrap();
    let (model, meta) = seeded(entry, 64);
    let bytes = zoo_cli::onnx::onnx_bytes(model.as_ref(), &meta).unwrap();
    let proto = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
    assert_eq!(proto.opset_import[0].version, 17);
    let graph = proto.graph.as_ref().unwrap();
    assert_eq!(graph.input[0].name, "images");
    assert_eq!(graph.output[0].name, "logits");
    let names: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for name in [
        "conv1.weight",
        "bn1.running_var",
        "layer2.0.downsample.0.weight",
        "fc.bias",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    // One initialiser per zoo tensor (ResNet-18: 62 weights and biases, 40 running
    // statistics), nothing else: ResNet needs no constants.
    assert_eq!(names.len(), 62 + 40);
    let meta_of = |key: &str| {
        proto
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.clone())
            .unwrap_or_else(|| panic!("no metadata {key}"))
    };
    assert_eq!(meta_of("model"), "tv-resnet18");
    assert_eq!(meta_of("mean"), "[0.5,0.5,0.5]");
    let classes: Vec<String> = serde_json::from_str(&meta_of("classes")).unwrap();
    assert_eq!(classes.len(), 10);
    let t: InputTransform = serde_json::from_str(&meta_of("eval_transform")).unwrap();
    assert_eq!(t, meta.run.eval_transform);
    // No Dropout and no training-mode node in an evaluation graph.
    assert!(graph.node.iter().all(|n| n.op_type != "Dropout"));
}

#[test]
fn what_onnx_cannot_express_is_refused_naming_the_layer() {
    // torchvision's VGG at 64 px: its AdaptiveAvgPool2d((7, 7)) pools a 2x2 map.
    let entry = zoo_cli::find("tv-vgg11").unwrap();
    let input = InputSpec::square(3, 64);
    let model = entry
        .build(
            input,
            10,
            candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu),
        )
        .unwrap();
    let meta = CheckpointMeta::new(RunInfo::new(
        "tv-vgg11",
        input,
        (0..10).map(|i| i.to_string()).collect(),
        InputTransform::notebook(3, 64),
        String::new(),
        0,
    ));
    let err = format!(
        "{:#}",
        zoo_cli::onnx::onnx_bytes(model.as_ref(), &meta).unwrap_err()
    );
    assert!(
        err.contains("AdaptiveAvgPool2d((7, 7)) on a 2x2 map"),
        "{err}"
    );
    assert!(err.contains("tv-vgg11"), "{err}");
}

#[test]
fn zoo_export_writes_the_file_and_names_a_bad_checkpoint() {
    let dir = zoo_core::testing::scratch_dir("onnx");
    let entry = zoo_cli::find("nin-mnist").unwrap();
    let input = InputSpec::square(1, 67);
    let store = ParamStore::new(2, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
    entry.build(input, 10, store.var_builder()).unwrap();
    let meta = CheckpointMeta::new(RunInfo::new(
        "nin-mnist",
        input,
        zoo_core::data::digit_classes(),
        InputTransform::notebook(1, 67),
        String::new(),
        0,
    ));
    let ckpt = dir.join("nin.safetensors");
    zoo_core::train::checkpoint::save_checkpoint(&ckpt, &store, None, None, &meta).unwrap();
    let out = dir.join("nin.onnx");
    let zoo = env!("CARGO_BIN_EXE_zoo");
    let run = |args: &[&str]| std::process::Command::new(zoo).args(args).output().unwrap();
    let ok = run(&[
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--onnx",
        out.to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(std::fs::metadata(&out).unwrap().len() > 4 * 1_990_000);
    let missing = dir.join("missing.safetensors");
    let bad = run(&[
        "export",
        "--checkpoint",
        missing.to_str().unwrap(),
        "--onnx",
        out.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing.safetensors"));
}
