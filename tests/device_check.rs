//! The device check's CPU self-test: candle's compositions (the ops a GPU runs) against zoo's
//! CPU kernels, for a network with BatchNorm and one with dropout, and its report; PyTorch's
//! benchmark lines that it and `cargo xtask bench models` read.

use zoo_cli::device_check::{CheckOptions, EpochCheck, Target, markdown, run_check};
use zoo_cli::find;
use zoo_cli::torch_bench::parse_result;

#[test]
fn the_self_test_compares_the_gpu_path_with_the_cpu_kernels() {
    let options = CheckOptions {
        target: Target::CpuReference,
        models: vec![find("resnet18").unwrap(), find("alexnet").unwrap()],
        batch: 2,
        timing: None,
        torch_results: None,
        epoch: Some(EpochCheck {
            model: find("resnet18").unwrap(),
            input_size: 32,
            images: 40,
            batch: 16,
        }),
    };
    let report = run_check(&options).unwrap();
    let modes: Vec<(&str, bool)> = report
        .parity
        .iter()
        .map(|p| (p.model, p.train_mode))
        .collect();
    // ResNet-18 is deterministic in training mode (BatchNorm on batch statistics) and is
    // compared in both modes; AlexNet's dropout draws its masks per device: evaluation only.
    assert_eq!(
        modes,
        [("resnet18", false), ("resnet18", true), ("alexnet", false)]
    );
    for p in &report.parity {
        // Two f32 implementations against the f64 reference: far inside the GPU tolerances
        // (ResNet-18's training-mode gradients about 5e-4, everything else about 1e-6), and a
        // floor of the size of f32 rounding.
        assert!(p.logit_error > 0.0 && p.logit_error < 1e-4, "{p:?}");
        assert!(p.grad_error > 0.0 && p.grad_error < 5e-3, "{p:?}");
        assert!(p.logit_noise > 0.0 && p.logit_noise < 1e-4, "{p:?}");
        assert!(p.passed());
        assert!(!p.worst_grad.is_empty());
    }
    let (model, size, images, seconds) = report.epoch.unwrap();
    assert_eq!((model, size, images), ("resnet18", 32, 40));
    assert!(seconds > 0.0);
    let md = markdown(&report, "## test");
    assert!(md.starts_with("## test\n"));
    assert_eq!(md.matches("| ok |").count(), 3, "{md}");
    assert!(md.contains("One epoch of `resnet18` at 32 px on 40 synthetic"));
}

#[test]
fn the_self_test_refuses_a_batch_of_one() {
    let options = CheckOptions {
        target: Target::CpuReference,
        models: vec![find("nin").unwrap()],
        batch: 1,
        timing: None,
        torch_results: None,
        epoch: None,
    };
    let err = run_check(&options).unwrap_err().to_string();
    assert!(err.contains("--batch 1"), "{err}");
}

#[test]
fn pytorch_result_lines_are_read_or_refused_by_quote() {
    let r = parse_result("RESULT resnet18 32 470.3 1749.7 743").unwrap();
    assert_eq!(
        (r.model.as_str(), r.size, r.train),
        ("resnet18", 32, Some(470.3))
    );
    assert_eq!((r.infer, r.peak_mib), (1749.7, 743.0));
    // A case PyTorch did not train (--infer-only, or batch 1 with BatchNorm).
    assert_eq!(
        parse_result("RESULT nin 224 - 108.3 949").unwrap().train,
        None
    );
    let err = parse_result("RESULT nin 224 fast 108.3 949").unwrap_err();
    assert!(format!("{err:#}").contains("train img/s"), "{err:#}");
    assert!(parse_result("RESULT nin 224").is_err());
}

#[test]
fn a_comparison_passes_within_its_tolerance_or_three_times_its_floor() {
    use zoo_cli::device_check::{GRAD_TOLERANCE, LOGIT_TOLERANCE, NOISE_FACTOR, Parity};
    let p = |logit_error: f64, grad_error: f64, grad_noise: f64| Parity {
        model: "resnet18",
        input: 64,
        train_mode: true,
        logit_error,
        logit_noise: 1e-7,
        worst_grad: "0.0.weight".to_string(),
        grad_error,
        grad_noise,
    };
    assert!(p(1e-6, GRAD_TOLERANCE * 0.9, 0.0).passed());
    // A wrong kernel: gradients 10% off with a floor of rounding size.
    assert!(!p(1e-6, 0.1, 1e-5).passed());
    assert!(!p(LOGIT_TOLERANCE * 1.5, 1e-6, 0.0).passed());
    // An ill-conditioned tensor whose own rounding moves it 4%: within three times that.
    assert!(p(1e-6, 0.1, 0.04).passed());
    assert!(!p(1e-6, NOISE_FACTOR * 0.04 * 1.01, 0.04).passed());
    // A non-finite error never passes.
    assert!(!p(1e-6, f64::MAX, 0.04).passed());
    assert!(!p(f64::NAN, 1e-6, 0.0).passed());
}
