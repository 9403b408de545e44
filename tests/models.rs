//! Registry-wide model tests: every registered network builds, counts its parameters as the
//! notebook or torchvision does, runs forward and backward in both modes, and summarises from the CLI.

use candle_core::{DType, Device, Result};
use zoo_cli::registry::registry;
use zoo_core::InputSpec;
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::testing::{check_backward_reaches_every_parameter, max_abs_diff, test_input};

fn store(seed: u64) -> ParamStore {
    ParamStore::new(seed, InitScheme::XavierUniform, DType::F32, &Device::Cpu)
}

#[test]
fn reference_parameter_counts_and_unique_weight_names() -> Result<()> {
    for entry in registry() {
        // Zeros: only names and shapes matter here, and VGG-11 has 129M parameters.
        let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
        let model = entry.build_reference(vb)?;
        if let Some(expected) = entry.reference_params {
            assert_eq!(model.num_params(), expected, "{}", entry.name);
        }
        let r = entry.reference_input;
        let out = model.output_shape(&[128, r.channels, r.height, r.width])?;
        assert_eq!(out, vec![128, entry.reference_classes], "{}", entry.name);
    }
    Ok(())
}

#[test]
fn every_model_trains_and_evaluates_at_its_cpu_size() -> Result<()> {
    for entry in registry() {
        let size = entry.cpu_input_size();
        let input = InputSpec::square(entry.reference_input.channels, size);
        let s = store(5);
        // A ParamStore refuses a name twice, so building proves the names are unique.
        let model = entry.build(input, 10, s.var_builder())?;
        let names: Vec<String> = s.named_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(
            names.iter().all(|n| n.ends_with("weight")
                || n.ends_with("bias")
                || n.ends_with("running_mean")
                || n.ends_with("running_var")),
            "{}: unexpected tensor names {names:?}",
            entry.name
        );
        assert_eq!(s.num_trainable(), model.num_params(), "{}", entry.name);
        let shape = input.batched(2);
        for train in [true, false] {
            let y = model.forward_t(&test_input(&shape, 1)?, train)?;
            assert_eq!(y.dims(), &[2, 10], "{} train={train}", entry.name);
            let finite = y
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite());
            assert!(finite, "{}: non-finite logits", entry.name);
        }
        check_backward_reaches_every_parameter(&s, model.as_ref(), &shape)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", entry.name)))?;
    }
    Ok(())
}

/// As in PyTorch (checked with scripts/parity.py's definitions, torch 2.x): one NaN pixel in
/// the first image makes every logit of that image NaN, in both modes, and leaves the other
/// image's logits finite in evaluation mode. zoo's kernels (ReLU fused into convolutions,
/// Linear and BatchNorm; pooling) used to turn NaN into 0.
#[test]
fn a_nan_input_propagates_to_every_logit_as_in_pytorch() -> Result<()> {
    for entry in registry() {
        let size = entry.cpu_input_size();
        let input = InputSpec::square(entry.reference_input.channels, size);
        let s = store(9);
        let model = entry.build(input, 10, s.var_builder())?;
        let shape = input.batched(2);
        let mut x = test_input(&shape, 3)?.flatten_all()?.to_vec1::<f32>()?;
        x[(size / 2) * size + size / 2] = f32::NAN;
        let x = candle_core::Tensor::from_vec(x, shape.as_slice(), &Device::Cpu)?;
        for train in [false, true] {
            let y = model.forward_t(&x, train)?.to_vec2::<f32>()?;
            assert!(
                y[0].iter().all(|v| v.is_nan()),
                "{} train={train}: logits {:?}",
                entry.name,
                y[0]
            );
            if !train {
                assert!(
                    y[1].iter().all(|v| v.is_finite()),
                    "{}: {:?}",
                    entry.name,
                    y[1]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn training_and_evaluation_modes_differ() -> Result<()> {
    for entry in registry() {
        let size = entry.cpu_input_size();
        let input = InputSpec::square(entry.reference_input.channels, size);
        let model = entry.build(input, 10, store(6).var_builder())?;
        let x = test_input(&input.batched(4), 2)?;
        let eval_a = model.forward_t(&x, false)?;
        let eval_b = model.forward_t(&x, false)?;
        assert_eq!(
            max_abs_diff(&eval_a, &eval_b)?,
            0.0,
            "{}: evaluation is deterministic",
            entry.name
        );
        model.context().seed_dropout(1);
        let train = model.forward_t(&x, true)?;
        if entry.name == "googlenet" {
            // The notebook's GoogLeNet has neither BatchNorm nor Dropout: the modes agree.
            assert_eq!(max_abs_diff(&train, &eval_a)?, 0.0, "googlenet");
        } else {
            // BatchNorm or Dropout: training mode computes something else.
            assert!(
                max_abs_diff(&train, &eval_a)? > 1e-6,
                "{}: train and eval agree",
                entry.name
            );
        }
    }
    Ok(())
}

#[test]
fn min_input_is_exactly_the_smallest_that_builds() -> Result<()> {
    for entry in registry() {
        let c = entry.reference_input.channels;
        let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
        entry.build(InputSpec::square(c, entry.min_input), 10, vb.clone())?;
        if entry.min_input > 1 {
            let err = entry
                .build(InputSpec::square(c, entry.min_input - 1), 10, vb)
                .err()
                .unwrap_or_else(|| panic!("{} builds below its min_input", entry.name));
            assert!(
                err.to_string().contains("is too small"),
                "{}: {err}",
                entry.name
            );
        }
    }
    Ok(())
}

#[test]
fn same_seed_same_weights_for_every_model() -> Result<()> {
    for entry in registry()
        .iter()
        .filter(|e| e.name == "resnet18" || e.name == "nin")
    {
        let input = InputSpec::square(entry.reference_input.channels, entry.cpu_input_size());
        let (a, b, c) = (store(9), store(9), store(10));
        for s in [&a, &b, &c] {
            entry.build(input, 10, s.var_builder())?;
        }
        for ((name, va), ((_, vb), (_, vc))) in a
            .named_tensors()
            .iter()
            .zip(b.named_tensors().iter().zip(c.named_tensors().iter()))
        {
            assert_eq!(max_abs_diff(va.as_tensor(), vb.as_tensor())?, 0.0, "{name}");
            if name.ends_with("weight") && !name.contains("bn") && va.as_tensor().rank() > 1 {
                assert!(
                    max_abs_diff(va.as_tensor(), vc.as_tensor())? > 0.0,
                    "{name} ignores the seed"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn zoo_summary_json_for_every_model() {
    let zoo = env!("CARGO_BIN_EXE_zoo");
    for entry in registry() {
        let out = std::process::Command::new(zoo)
            .args(["summary", entry.name, "--json"])
            .output()
            .expect("zoo runs");
        assert!(
            out.status.success(),
            "{}: {}",
            entry.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(json["model"], entry.name);
        let r = entry.reference_input;
        assert_eq!(
            json["input"],
            serde_json::json!([128, r.channels, r.height, r.width])
        );
        let layers = json["layers"].as_array().expect("layers");
        let per_layer: u64 = layers.iter().map(|l| l["params"].as_u64().unwrap()).sum();
        assert_eq!(json["params"].as_u64(), Some(per_layer), "{}", entry.name);
        if let Some(p) = entry.reference_params {
            assert_eq!(json["params"].as_u64(), Some(p as u64), "{}", entry.name);
        }
        assert_eq!(
            layers.last().unwrap()["output_shape"],
            serde_json::json!([128, entry.reference_classes])
        );
        assert!(json["macs"].as_u64().unwrap() > 0);
        for key in ["name", "kind", "output_shape", "params"] {
            assert!(
                layers.iter().all(|l| !l[key].is_null()),
                "{}: layer without {key}",
                entry.name
            );
        }
    }
    // Bad input: an unknown model and a too-small image are clear errors, not panics.
    let out = std::process::Command::new(zoo)
        .args(["summary", "lenet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown model `lenet`; known models: alexnet")
    );
    let out = std::process::Command::new(zoo)
        .args(["summary", "alexnet", "--input", "1,3,32,32"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AlexNet: input 3x32x32 is too small"));
}

#[test]
fn notebook_resnet_table_macs_are_the_known_figure() -> anyhow::Result<()> {
    // ResNet-18 at 224 px: 1.81 GMAC per image (the commonly quoted 1.8 GFLOPs).
    let summary = zoo_cli::summary_cmd::summarize("resnet18", None)?;
    assert_eq!(summary.macs, 1_813_566_464);
    // Independently: stem 118,013,952 = 64*112*112*3*49.
    assert_eq!(summary.layers[0].macs, 64 * 112 * 112 * 3 * 49);
    Ok(())
}

#[test]
fn summaries_of_absurd_inputs_are_errors_not_wrapped_counts() {
    use zoo_cli::summary_cmd::summarize;
    let err = format!(
        "{:#}",
        summarize("alexnet", Some([1, 3, 100_000, 100_000])).unwrap_err()
    );
    assert!(err.contains("up to 2048 x 2048"), "{err}");
    // The counts themselves are checked: a product past u64 is an error naming the layer.
    let err = zoo_core::nn::mac_product(
        "Conv2d",
        &[1 << 20, 3, 2048, 2048],
        &[1 << 20, 4096, 2048, 2048, 512, 3, 3],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("Conv2d on input [1048576, 3, 2048, 2048]"),
        "{err}"
    );
    assert_eq!(
        zoo_core::nn::mac_product("Linear", &[2, 8], &[2, 8, 4]).unwrap(),
        64
    );
    assert!(zoo_core::nn::mac_sum("Sequential", &[1], &[u64::MAX, 1]).is_err());
}
