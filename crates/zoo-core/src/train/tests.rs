//! Tests of the training side: optimisers and loss against PyTorch, schedules, checkpoints,
//! and a run interrupted mid-epoch that resumes to the same weights as one never interrupted.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::ModuleT;

use super::checkpoint::{CheckpointMeta, RunInfo, apply_weights, load_checkpoint, save_checkpoint};
use super::loss::cross_entropy;
use super::optim::{Optimizer, OptimizerConfig};
use super::schedule::Schedule;
use super::trainer::{Control, Outcome, Quiet, Recipe, StopAfterSteps, TrainObserver, Trainer};
use crate::data::digit_classes;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::transforms::InputTransform;
use crate::init::ParamStore;
use crate::model::{InputSpec, Model};
use crate::nn::{BatchNorm2d, Conv2d, Conv2dSpec, Flatten, Linear, MaxPool2d, ReLU, SequentialT};
use crate::testing::{SmallNet, test_store, toy_dataset};

// From scripts/optim_reference.py (PyTorch 2.15): p0 = [1, -2, 0.5, 3], loss = sum(c p^2),
// c = [1, 2, 3, 0.5], three steps at lr 0.1.
const SGD_PLAIN: [f32; 4] = [0.512, -0.432, 0.03199999, 2.187];
const SGD_MOMENTUM_WD: [f32; 4] = [0.05819422, 1.084493, -0.4274635, 1.443974];
const SGD_NESTEROV: [f32; 4] = [-0.108352, 0.8665919, -0.152032, 0.981963];
const ADAMW: [f32; 4] = [0.6989112, -1.694945, 0.2037124, 2.691704];
const CE_PLAIN: f32 = 1.575456;
const CE_SMOOTH_01: f32 = 1.605456;

/// `torch.optim.SGD`'s update written out on plain numbers (dampening 0), for any momentum,
/// Nesterov flag and weight decay.
fn sgd_by_hand(
    p: &mut [f32],
    buf: &mut Option<Vec<f32>>,
    g: &[f32],
    cfg: (f32, bool, f32),
    lr: f32,
) {
    let (momentum, nesterov, wd) = cfg;
    let d: Vec<f32> = g.iter().zip(p.iter()).map(|(g, p)| g + wd * p).collect();
    let update = if momentum == 0.0 {
        d
    } else {
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => b.iter().zip(&d).map(|(b, d)| momentum * b + d).collect(),
        };
        let update = if nesterov {
            d.iter().zip(&b).map(|(d, b)| d + momentum * b).collect()
        } else {
            b.clone()
        };
        *buf = Some(b);
        update
    };
    for (p, u) in p.iter_mut().zip(update) {
        *p -= lr * u;
    }
}

#[test]
fn in_place_sgd_follows_torchs_update_for_every_combination() -> Result<()> {
    // Random gradients (not a function of p), five steps with a changing rate: every
    // combination of momentum, Nesterov and weight decay against the update written out.
    for (momentum, nesterov, wd) in [
        (0.0, false, 0.0),
        (0.0, false, 5e-4),
        (0.9, false, 0.0),
        (0.9, false, 5e-4),
        (0.9, true, 0.0),
        (0.9, true, 5e-4),
    ] {
        let start = crate::testing::test_input(&[3, 5], 1)?;
        let p = Var::from_tensor(&start)?;
        let mut opt = Optimizer::new(
            OptimizerConfig::Sgd {
                momentum: momentum as f64,
                nesterov,
                weight_decay: wd as f64,
            },
            vec![("p".into(), p.clone())],
        )?;
        let mut want = start.flatten_all()?.to_vec1::<f32>()?;
        let mut buf = None;
        for step in 0..5u64 {
            let g = crate::testing::test_input(&[3, 5], 10 + step)?;
            let lr = 0.1 / (step + 1) as f32;
            // The gradient store of `sum(p * g)` holds exactly g for p.
            let grads = (p.as_tensor() * &g)?.sum_all()?.backward()?;
            opt.step(&grads, lr as f64)?;
            sgd_by_hand(
                &mut want,
                &mut buf,
                &g.flatten_all()?.to_vec1()?,
                (momentum, nesterov, wd),
                lr,
            );
        }
        let got = p.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "momentum {momentum} nesterov {nesterov} wd {wd}: {got:?} vs {want:?}"
            );
        }
    }
    Ok(())
}

/// The workspace's candle-core stores a tensor's first gradient as it is instead of adding it
/// to zeros (vendor/candle-core/ZOO-PATCH.md): reused tensors must still sum every
/// contribution, strided gradients come back contiguous, and a second backward pass over the
/// same graph gives the same numbers (no gradient was modified through shared storage).
#[test]
fn backward_accumulates_gradients_of_reused_tensors() -> Result<()> {
    let dev = Device::Cpu;
    let a_values = [1f32, -2., 0.5, 3., -1.5, 2.];
    let a = Var::from_tensor(&Tensor::new(&a_values, &dev)?.reshape((2, 3))?)?;
    let b = Var::from_tensor(&Tensor::new(&[0.5f32, -1., 2.], &dev)?)?;
    let w_values = [0.25f32, -0.5, 1., 2., -3., 0.75];
    let w = Tensor::new(&w_values, &dev)?.reshape((3, 2))?;
    let (av, bv) = (a.as_tensor(), b.as_tensor());
    // sum((a + a) * a) + sum(a^T * w) + sum(a + b): a is used five times (twice in one add),
    // reaches one term through a transpose and b through a broadcast.
    let loss = ((av + av)? * av)?.sum_all()?;
    let loss = (loss + (av.t()? * &w)?.sum_all()?)?;
    let loss = (loss + av.broadcast_add(bv)?.sum_all()?)?;
    for pass in 0..2 {
        let grads = loss.backward()?;
        let da = grads.get(av).expect("gradient of a");
        let db = grads.get(bv).expect("gradient of b");
        assert!(da.is_contiguous() && db.is_contiguous(), "pass {pass}");
        // d/da = 4a + w^T + 1, d/db = number of rows (2), computed by hand.
        let want: Vec<f32> = (0..6)
            .map(|i| {
                let (r, c) = (i / 3, i % 3);
                4.0 * a_values[i] + w_values[c * 2 + r] + 1.0
            })
            .collect();
        assert_eq!(da.flatten_all()?.to_vec1::<f32>()?, want, "pass {pass}");
        assert_eq!(db.to_vec1::<f32>()?, vec![2f32; 3], "pass {pass}");
    }
    Ok(())
}

#[test]
fn optimisers_match_pytorch() -> Result<()> {
    let sgd = |momentum, nesterov, weight_decay| OptimizerConfig::Sgd {
        momentum,
        nesterov,
        weight_decay,
    };
    let adamw = OptimizerConfig::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    for (config, want) in [
        (sgd(0.0, false, 0.0), SGD_PLAIN),
        (sgd(0.9, false, 0.01), SGD_MOMENTUM_WD),
        (sgd(0.9, true, 0.0), SGD_NESTEROV),
        (adamw, ADAMW),
    ] {
        let p = Var::new(&[1.0f32, -2.0, 0.5, 3.0], &Device::Cpu)?;
        let c = Tensor::new(&[1.0f32, 2.0, 3.0, 0.5], &Device::Cpu)?;
        let mut opt = Optimizer::new(config, vec![("p".into(), p.clone())])?;
        for _ in 0..3 {
            let loss = (&c * p.as_tensor().sqr()?)?.sum_all()?;
            opt.step(&loss.backward()?, 0.1)?;
        }
        // The state records no graph (it would chain every step's graph together).
        assert!(
            opt.state_tensors().iter().all(|(_, t)| !t.track_op()),
            "{config:?}: tracked state"
        );
        let got = p.as_tensor().to_vec1::<f32>()?;
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() < 1e-5,
                "{config:?}: {got:?} vs PyTorch {want:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_and_label_smoothing_match_pytorch() -> Result<()> {
    let logits = Tensor::new(&[[2.0f32, -1.0, 0.5], [0.1, 0.2, 3.0]], &Device::Cpu)?;
    let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
    let plain = cross_entropy(&logits, &y, 0.0)?.to_scalar::<f32>()?;
    let smooth = cross_entropy(&logits, &y, 0.1)?.to_scalar::<f32>()?;
    assert!(
        (plain - CE_PLAIN).abs() < 1e-5 && (smooth - CE_SMOOTH_01).abs() < 1e-5,
        "{plain} {smooth}"
    );
    Ok(())
}

#[test]
fn schedules_hit_their_landmarks() {
    let (base, total, per_epoch) = (0.1, 100, 10);
    assert_eq!(Schedule::Constant.lr(base, 57, total, per_epoch), base);
    let step = Schedule::Step {
        every_epochs: 3,
        gamma: 0.1,
    };
    assert!((step.lr(base, 29, total, per_epoch) - 0.1).abs() < 1e-12);
    assert!((step.lr(base, 30, total, per_epoch) - 0.01).abs() < 1e-12);
    assert!((step.lr(base, 60, total, per_epoch) - 0.001).abs() < 1e-12);
    let cos = Schedule::Cosine {
        warmup_epochs: 1.0,
        min_factor: 0.0,
    };
    assert!(
        (cos.lr(base, 0, total, per_epoch) - 0.01).abs() < 1e-12,
        "warm-up starts at base/10 steps"
    );
    assert!((cos.lr(base, 10, total, per_epoch) - base).abs() < 1e-12);
    assert!((cos.lr(base, 55, total, per_epoch) - base / 2.0).abs() < 1e-3);
    assert!(cos.lr(base, 99, total, per_epoch) < 1e-3);
    let one = Schedule::OneCycle {
        pct_start: 0.3,
        div_factor: 25.0,
        final_div_factor: 1e4,
    };
    assert!((one.lr(base, 0, total, per_epoch) - base / 25.0).abs() < 1e-12);
    assert!((one.lr(base, 29, total, per_epoch) - base).abs() < 1e-12);
    assert!((one.lr(base, 99, total, per_epoch) - base / 25.0 / 1e4).abs() < 1e-12);
}

fn run_info(seed: u64) -> RunInfo {
    RunInfo::new(
        "tiny",
        InputSpec::square(1, 8),
        digit_classes(),
        InputTransform::notebook(1, 8),
        String::new(),
        seed,
    )
}

fn meta(seed: u64) -> CheckpointMeta {
    CheckpointMeta::new(run_info(seed))
}

fn run_dir(name: &str) -> crate::testing::ScratchDir {
    crate::testing::scratch_dir(&format!("train-{name}"))
}

fn weights(store: &ParamStore) -> HashMap<String, Vec<f32>> {
    store
        .named_tensors()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Trains `SmallNet::tiny` for `epochs` with momentum SGD and a cosine schedule; stops after
/// `stop_after` steps if given, resuming from `dir`'s last checkpoint if `resume`.
fn train_tiny(
    dir: &std::path::Path,
    stop_after: Option<u64>,
    resume: bool,
) -> (ParamStore, Outcome) {
    let store = test_store(17);
    let model = SmallNet::tiny(store.var_builder()).unwrap();
    let loader_config = LoaderConfig {
        batch_size: 16,
        prefetch: 2,
        ..LoaderConfig::notebook(17)
    };
    let train = Loader::new(toy_dataset(100, 1), loader_config).unwrap();
    let valid = Loader::new(
        toy_dataset(40, 2),
        LoaderConfig {
            shuffle: false,
            ..loader_config
        },
    )
    .unwrap();
    let recipe = Recipe {
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        },
        schedule: Schedule::Cosine {
            warmup_epochs: 0.5,
            min_factor: 0.0,
        },
        clip_grad_norm: Some(5.0),
        label_smoothing: 0.1,
        ema_decay: Some(0.9),
        ..Recipe::notebook(3, 0.05)
    };
    let mut trainer = Trainer {
        model: &model,
        store: &store,
        recipe,
        transform: InputTransform::notebook(1, 8),
        device: Device::Cpu,
        run: run_info(17),
        checkpoint_every: None,
        read_every: None,
        data_parallel: None,
        finetune: None,
    };
    let resume = resume.then(|| load_checkpoint(&Trainer::last_path(dir), &Device::Cpu).unwrap());
    let mut quiet = Quiet;
    let mut stopper = stop_after.map(|n| StopAfterSteps::new(n, &mut quiet));
    let observer: &mut dyn TrainObserver = match &mut stopper {
        Some(s) => s,
        None => &mut Quiet,
    };
    let outcome = trainer.fit(&train, &valid, dir, resume, observer).unwrap();
    (store, outcome)
}

#[test]
fn a_checkpoint_past_the_end_of_an_epoch_is_refused() {
    let dir = run_dir("past-the-end");
    let (_, first) = train_tiny(&dir, Some(3), false);
    assert_eq!(first, Outcome::Interrupted { epoch: 0, batch: 3 });
    // The stored position says batch 9 of an epoch that has 7 (written for other data).
    let last = Trainer::last_path(&dir);
    let mut ckpt = load_checkpoint(&last, &Device::Cpu).unwrap();
    ckpt.meta.progress.batch = 9;
    let store = test_store(17);
    SmallNet::tiny(store.var_builder()).unwrap();
    apply_weights(&store, &ckpt.model, "test").unwrap();
    save_checkpoint(&last, &store, None, None, &ckpt.meta).unwrap();
    let store = test_store(17);
    let model = SmallNet::tiny(store.var_builder()).unwrap();
    let loader = Loader::new(
        toy_dataset(100, 1),
        LoaderConfig {
            batch_size: 16,
            ..LoaderConfig::notebook(17)
        },
    )
    .unwrap();
    let mut trainer = Trainer {
        model: &model,
        store: &store,
        recipe: Recipe::notebook(3, 0.05),
        transform: InputTransform::notebook(1, 8),
        device: Device::Cpu,
        run: run_info(17),
        checkpoint_every: None,
        read_every: None,
        data_parallel: None,
        finetune: None,
    };
    let resume = load_checkpoint(&last, &Device::Cpu).unwrap();
    let err = match trainer.fit(&loader, &loader, &dir, Some(resume), &mut Quiet) {
        Err(e) => e.to_string(),
        Ok(o) => panic!("resumed to {o:?}"),
    };
    assert!(
        err.contains("stands at batch 9 of epoch 1, but an epoch has 7 batches"),
        "{err}"
    );
}

#[test]
fn a_run_killed_mid_epoch_resumes_to_the_same_weights() {
    let straight_dir = run_dir("straight");
    let (straight, outcome) = train_tiny(&straight_dir, None, false);
    let Outcome::Finished(metrics) = outcome else {
        panic!("finished")
    };
    assert_eq!(metrics.len(), 3);
    // It learns: training loss falls and validation accuracy is far above chance.
    assert!(metrics[2].train_loss < metrics[0].train_loss, "{metrics:?}");
    assert!(metrics[2].valid_acc > 0.5, "{metrics:?}");

    let dir = run_dir("interrupted");
    // 7 batches per epoch: stop in the middle of the second epoch, then again in the third.
    let (_, first) = train_tiny(&dir, Some(10), false);
    assert_eq!(first, Outcome::Interrupted { epoch: 1, batch: 3 });
    let (_, second) = train_tiny(&dir, Some(6), true);
    assert_eq!(second, Outcome::Interrupted { epoch: 2, batch: 2 });
    let (resumed, third) = train_tiny(&dir, None, true);
    let Outcome::Finished(resumed_metrics) = third else {
        panic!("finished")
    };
    assert_eq!(
        weights(&resumed),
        weights(&straight),
        "same weights and running statistics"
    );
    type Untimed = (usize, f64, f64, f64, f64, Option<f64>, f64);
    let timeless = |m: &[super::metrics::EpochMetrics]| -> Vec<Untimed> {
        m.iter()
            .map(|r| {
                (
                    r.epoch,
                    r.train_loss,
                    r.train_acc,
                    r.valid_loss,
                    r.valid_acc,
                    r.valid_acc_ema,
                    r.lr,
                )
            })
            .collect()
    };
    assert!(metrics.iter().all(|m| m.valid_acc_ema.is_some()));
    assert_eq!(
        timeless(&resumed_metrics),
        timeless(&metrics),
        "same metrics apart from timings"
    );
    for file in [
        "last.safetensors",
        "best.safetensors",
        "metrics.csv",
        "curves.png",
    ] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("epoch,train_loss,train_acc,valid_loss,valid_acc,"));
    // The file reads back as the run's metrics, value for value.
    let rows = super::metrics::read_csv(&dir.join("metrics.csv")).unwrap();
    assert_eq!(rows, resumed_metrics);
}

/// A tiny SmallNet (seed 3) whose running statistics moved off their initial values, saved as
/// `dir/w.safetensors` with `meta(3)`.
fn saved_small_net(dir: &std::path::Path) -> Result<(SmallNet, std::path::PathBuf)> {
    let store = test_store(3);
    let model = SmallNet::tiny(store.var_builder())?;
    model.forward_t(&crate::testing::test_input(&[4, 1, 8, 8], 1)?, true)?;
    let path = dir.join("w.safetensors");
    save_checkpoint(&path, &store, None, None, &meta(3))?;
    Ok((model, path))
}

#[test]
fn checkpoint_round_trip_gives_identical_logits_and_wrong_shapes_are_named() -> Result<()> {
    let dir = run_dir("roundtrip");
    let (model, path) = saved_small_net(&dir)?;
    let x = crate::testing::test_input(&[3, 1, 8, 8], 2)?;
    let before = model
        .forward_t(&x, false)?
        .flatten_all()?
        .to_vec1::<f32>()?;

    let other = test_store(99);
    let copy = SmallNet::tiny(other.var_builder())?;
    let ckpt = load_checkpoint(&path, &Device::Cpu)?;
    assert_eq!(ckpt.meta, meta(3));
    apply_weights(&other, &ckpt.model, "w.safetensors")?;
    assert_eq!(
        copy.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?,
        before
    );

    // A model of another shape: every problem listed, by name and shapes.
    let wrong = ParamStore::new(
        0,
        crate::init::InitScheme::XavierUniform,
        DType::F32,
        &Device::Cpu,
    );
    {
        let vb = wrong.var_builder();
        Conv2d::new(Conv2dSpec::new(3, 8, 3), vb.pp("0"))?;
        Linear::new(10, 10, vb.pp("extra"))?;
    }
    let err = apply_weights(&wrong, &ckpt.model, "w.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor `0.weight`: expected shape [8, 3, 3, 3], found [8, 1, 3, 3]"),
        "{err}"
    );
    assert!(
        err.contains("missing tensor `extra.weight` (expected shape [10, 10])"),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor `6.weight` [10, 128]"),
        "{err}"
    );
    // Not a zoo checkpoint at all.
    std::fs::write(dir.join("junk.safetensors"), b"junk").unwrap();
    let err = load_checkpoint(&dir.join("junk.safetensors"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("junk.safetensors: not a safetensors file"),
        "{err}"
    );
    Ok(())
}

/// A checkpoint of `tensors` with `meta`, written as zoo writes them.
fn write_checkpoint(path: &std::path::Path, tensors: &[(&str, Tensor)], meta: &CheckpointMeta) {
    let metadata = HashMap::from([
        ("format".to_string(), "zoo-checkpoint-v1".to_string()),
        ("zoo".to_string(), serde_json::to_string(meta).unwrap()),
    ]);
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, v)| (*k, v)), Some(metadata)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn checkpoints_with_non_finite_or_integer_tensors_or_a_bad_transform_are_refused() -> Result<()> {
    let dir = run_dir("refused");
    let good = Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu)?;
    for (name, bad, expected) in [
        (
            "nan",
            Tensor::new(&[0.5f32, f32::NAN, 2.0], &Device::Cpu)?,
            "holds NaN or infinite",
        ),
        (
            "inf",
            Tensor::new(&[f32::INFINITY, 1.0, 2.0], &Device::Cpu)?,
            "holds NaN or infinite",
        ),
        ("int", Tensor::new(&[1i64, 2, 3], &Device::Cpu)?, "is I64"),
    ] {
        let path = dir.join(format!("{name}.safetensors"));
        write_checkpoint(
            &path,
            &[("a.weight", good.clone()), ("b.bias", bad)],
            &meta(1),
        );
        let err = load_checkpoint(&path, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&path.display().to_string())
                && err.contains("tensor `b.bias`")
                && err.contains(expected),
            "{name}: {err}"
        );
    }
    // The stored evaluation transform: std 0, two means for one channel, a 100000-pixel side
    // (JSON cannot hold a NaN: that one fails as bad metadata).
    let mut cases = Vec::new();
    for (what, edit) in [
        (
            "std",
            (|t: &mut InputTransform| t.std = vec![0.0]) as fn(&mut InputTransform),
        ),
        ("mean", |t| t.mean = vec![0.5, 0.5]),
        ("height", |t| t.height = 100_000),
    ] {
        let mut m = meta(1);
        edit(&mut m.run.eval_transform);
        cases.push((what, m));
    }
    for (what, m) in cases {
        let path = dir.join(format!("transform-{what}.safetensors"));
        write_checkpoint(&path, &[("a.weight", good.clone())], &m);
        let err = load_checkpoint(&path, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("evaluation transform") && err.contains(what),
            "{what}: {err}"
        );
    }
    Ok(())
}

#[test]
fn streamed_weights_equal_the_checkpoint_and_bad_files_are_named() -> Result<()> {
    use super::checkpoint_stream::{read_index, stream_weights_in};
    let dir = run_dir("streamed");
    let (model, path) = saved_small_net(&dir)?;
    let x = crate::testing::test_input(&[3, 1, 8, 8], 2)?;
    let logits =
        |m: &SmallNet| -> Result<Vec<f32>> { m.forward_t(&x, false)?.flatten_all()?.to_vec1() };
    // 40 bytes at a time: one row of each weight per read, across every tensor's rows.
    let index = read_index(&path)?;
    assert_eq!(index.meta, meta(3));
    let zeroed = test_store(99);
    let copy = SmallNet::tiny(zeroed.zeroed_var_builder())?;
    stream_weights_in(&zeroed, &index, 40)?;
    assert_eq!(logits(&copy)?, logits(&model)?);
    // A misfit lists every problem, as apply_weights does.
    let wrong = test_store(0);
    Conv2d::new(Conv2dSpec::new(3, 8, 3), wrong.zeroed_var_builder().pp("0"))?;
    let err = stream_weights_in(&wrong, &index, 40)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("w.safetensors does not fit this model"),
        "{err}"
    );
    assert!(
        err.contains("expected shape [8, 3, 3, 3], found [8, 1, 3, 3]"),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor `6.weight` [10, 128]"),
        "{err}"
    );
    // A NaN in the second row of a tensor, an integer tensor, a cut file: each named.
    let good = Tensor::new(&[[0.5f32, 1.0], [-1.0, 2.0]], &Device::Cpu)?;
    let nan = Tensor::new(&[[0.5f32, 1.0], [f32::NAN, 2.0]], &Device::Cpu)?;
    let int = Tensor::new(&[1i64, 2], &Device::Cpu)?;
    for (name, bad, expected) in [
        ("nan", nan, "holds NaN or infinite"),
        ("int", int, "is I64"),
    ] {
        let path = dir.join(format!("{name}.safetensors"));
        write_checkpoint(
            &path,
            &[("a.weight", good.clone()), ("b", bad.clone())],
            &meta(1),
        );
        let one = test_store(0);
        one.zeroed_var_builder().get(bad.dims(), "b")?;
        one.zeroed_var_builder().get((2, 2), "a.weight")?;
        let err = read_index(&path)
            .and_then(|index| stream_weights_in(&one, &index, 8))
            .unwrap_err()
            .to_string();
        let named = err.contains(&path.display().to_string()) && err.contains("tensor `b`");
        assert!(named && err.contains(expected), "{name}: {err}");
    }
    let bytes = std::fs::read(dir.join("nan.safetensors"))?;
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 4])?;
    let err = read_index(&cut).err().unwrap().to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("do not hold"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_momentum_checkpoint_without_its_optimiser_state_does_not_resume() -> Result<()> {
    let store = test_store(2);
    let vb = store.var_builder();
    vb.get_with_hints(3, "w", candle_nn::Init::Const(1.0))?;
    let config = OptimizerConfig::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut opt = Optimizer::new(config, store.trainable())?;
    let err = opt.load_state(5, HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("`first.w` is missing after 5 steps"), "{err}");
    // Stored in another dtype: named.
    let state = HashMap::from([(
        "first.w".to_string(),
        Tensor::new(&[1f64, 2., 3.], &Device::Cpu)?,
    )]);
    let err = opt.load_state(5, state).unwrap_err().to_string();
    assert!(err.contains("`first.w`: expected F32"), "{err}");
    // At step 0 there is no state yet, and plain SGD never has any.
    opt.load_state(0, HashMap::new())?;
    Optimizer::new(OptimizerConfig::plain_sgd(), store.trainable())?
        .load_state(5, HashMap::new())?;
    Ok(())
}

#[test]
fn nan_loss_stops_the_run_with_a_clear_message() {
    let dir = run_dir("nan");
    let store = test_store(1);
    let model = SmallNet::tiny(store.var_builder()).unwrap();
    let loader_config = LoaderConfig {
        batch_size: 16,
        ..LoaderConfig::notebook(1)
    };
    let train = Loader::new(toy_dataset(64, 1), loader_config).unwrap();
    let mut trainer = Trainer {
        model: &model,
        store: &store,
        recipe: Recipe::notebook(2, 1e30),
        transform: InputTransform::notebook(1, 8),
        device: Device::Cpu,
        run: run_info(1),
        checkpoint_every: None,
        read_every: None,
        data_parallel: None,
        finetune: None,
    };
    let err = trainer
        .fit(&train, &train, &dir, None, &mut Quiet)
        .unwrap_err()
        .to_string();
    // No checkpoint was written before the loss blew up: the message must not name one.
    assert!(
        err.contains("training stopped; no checkpoint was written yet"),
        "{err}"
    );
    assert!(!Trainer::last_path(&dir).exists());
}

#[test]
fn ema_follows_the_hand_computation_and_swaps_back() -> Result<()> {
    let store = test_store(3);
    let vb = store.var_builder();
    let w = vb.get_with_hints(4, "w", candle_nn::Init::Const(1.0))?;
    let var = || store.named_tensors()[0].1.clone();
    let mut ema = super::ema::Ema::new(&store, 0.9)?;
    // Update 1: decay min(0.9, 2/11); update 2 after another change: min(0.9, 3/12).
    var().set(&Tensor::new(&[2f32, 4., 6., 8.], &Device::Cpu)?)?;
    ema.update(1)?;
    let d1 = 2.0f64 / 11.0;
    let mut expected: Vec<f64> = [2., 4., 6., 8.]
        .iter()
        .map(|x| d1 + (1.0 - d1) * x)
        .collect();
    var().set(&Tensor::new(&[0f32, 0., 0., 10.], &Device::Cpu)?)?;
    ema.update(2)?;
    let d2 = 0.25;
    for (e, x) in expected.iter_mut().zip([0., 0., 0., 10.]) {
        *e = d2 * *e + (1.0 - d2) * x;
    }
    assert!((ema.decay_at(1000) - 0.9).abs() < 1e-12);
    let shadow: Vec<f32> = ema.state_tensors()[0].1.to_vec1()?;
    for (s, e) in shadow.iter().zip(&expected) {
        assert!((*s as f64 - e).abs() < 1e-6, "{shadow:?} vs {expected:?}");
    }
    // Inside with_shadow the model holds the EMA; afterwards its own weights again.
    let inside: Vec<f32> = ema.with_shadow(|| w.to_vec1())?;
    assert_eq!(inside, shadow);
    assert_eq!(w.to_vec1::<f32>()?, vec![0., 0., 0., 10.]);
    // Restoring needs every tensor, with its shape.
    let err = ema
        .load_state(&HashMap::new(), "test.safetensors")
        .unwrap_err();
    assert!(err.to_string().contains("EMA of `w` is missing"), "{err}");
    assert!(super::ema::Ema::new(&store, 1.0).is_err());
    Ok(())
}

#[test]
fn time_to_accuracy_reads_the_first_epoch_that_reached_it() {
    use super::metrics::{EpochMetrics, elapsed_seconds, time_to_accuracy, time_to_best};
    let row = |epoch, wall_seconds, valid_acc, valid_acc_ema: Option<f64>| EpochMetrics {
        epoch,
        train_loss: 1.0,
        train_acc: 0.5,
        valid_loss: 1.0,
        valid_acc,
        valid_loss_ema: valid_acc_ema.map(|_| 1.0),
        valid_acc_ema,
        lr: 0.1,
        seconds: wall_seconds * 0.9,
        wall_seconds,
        images_per_sec: 100.0,
        valid_acc_flip: None,
        valid_acc_ema_flip: None,
    };
    let rows = [
        row(1, 10.0, 0.30, Some(0.20)),
        row(2, 20.0, 0.55, Some(0.48)),
        row(3, 30.0, 0.52, Some(0.61)),
        row(4, 40.0, 0.58, Some(0.60)),
    ];
    assert_eq!(elapsed_seconds(&rows), vec![10.0, 30.0, 60.0, 100.0]);
    let half = time_to_accuracy(&rows, 0.5).unwrap();
    assert_eq!((half.epoch, half.seconds), (2, 30.0));
    // The best is the EMA's 0.61 in epoch 3, not the raw weights' 0.58 in epoch 4.
    let best = time_to_best(&rows).unwrap();
    assert_eq!((best.epoch, best.seconds, best.accuracy), (3, 60.0, 0.61));
    assert_eq!(time_to_accuracy(&rows, 0.7), None);
    assert_eq!(time_to_best(&[]), None);
}

#[test]
fn weight_decay_leaves_one_dimensional_parameters_alone() -> Result<()> {
    let store = test_store(5);
    let vb = store.var_builder();
    let w = vb.get_with_hints((2, 2), "fc.weight", candle_nn::Init::Const(1.0))?;
    let b = vb.get_with_hints(2, "fc.bias", candle_nn::Init::Const(1.0))?;
    // A loss whose gradient is negligible (candle prunes a product with 0 from the graph):
    // only the decay moves the parameters.
    let loss = ((w.sum_all()? + b.sum_all()?)? * 1e-30)?;
    let close = |t: &Tensor, v: f32| -> Result<bool> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|x| (x - v).abs() < 1e-6))
    };
    for (filter, expected_bias) in [(true, 1.0f32), (false, 0.9)] {
        for (_, v) in store.named_tensors() {
            v.set(&v.as_tensor().ones_like()?)?;
        }
        let config = OptimizerConfig::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.1,
        };
        let mut opt = Optimizer::new(config, store.trainable())?;
        if filter {
            opt = opt.without_decay_on_1d();
        }
        assert_eq!(opt.decays("fc.bias"), !filter);
        assert!(opt.decays("fc.weight"));
        opt.step(&loss.backward()?, 1.0)?;
        assert!(close(&w, 0.9)?, "{w}");
        assert!(close(&b, expected_bias)?, "filter {filter}: {b}");
    }
    Ok(())
}

#[test]
fn loss_falls_and_accuracy_rises_on_real_mnist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if !root.is_dir() {
        println!("skipped: ../shared/data is not present");
        return;
    }
    let train = crate::data::resolve::load_split(
        &root,
        &crate::data::Dataset::Mnist,
        crate::data::Split::Train,
    )
    .unwrap()
    .per_class_prefix(300);
    let test = crate::data::resolve::load_split(
        &root,
        &crate::data::Dataset::Mnist,
        crate::data::Split::Test,
    )
    .unwrap()
    .per_class_prefix(100);
    // conv(1->16) BN ReLU pool, conv(16->32) ReLU pool, linear: small enough for a test.
    let store = test_store(5);
    let vb = store.var_builder();
    let mut net = SequentialT::new();
    net.push_with(&vb, |vb| {
        Conv2d::new(Conv2dSpec::new(1, 16, 3).padding(1), vb)
    })
    .unwrap();
    let context = zoo_nn::ForwardContext::default();
    net.push_with(&vb, |vb| BatchNorm2d::new(16, vb, &context))
        .unwrap();
    net.push(ReLU);
    net.push(MaxPool2d::new(2, 2, 0));
    net.push_with(&vb, |vb| {
        Conv2d::new(Conv2dSpec::new(16, 32, 3).padding(1), vb)
    })
    .unwrap();
    net.push(ReLU);
    net.push(MaxPool2d::new(2, 2, 0));
    net.push(Flatten);
    net.push_with(&vb, |vb| Linear::new(32 * 7 * 7, 10, vb))
        .unwrap();
    struct Net(SequentialT, zoo_nn::ForwardContext);
    impl ModuleT for Net {
        fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
            self.0.forward_t(x, train)
        }
    }
    impl Model for Net {
        fn body(&self) -> &SequentialT {
            &self.0
        }
        fn input(&self) -> InputSpec {
            InputSpec::square(1, 28)
        }
        fn num_classes(&self) -> usize {
            10
        }
        fn context(&self) -> &zoo_nn::ForwardContext {
            &self.1
        }
    }
    let model = Net(net, context);
    let config = LoaderConfig {
        batch_size: 32,
        ..LoaderConfig::notebook(5)
    };
    let train = Loader::new(Arc::new(train), config).unwrap();
    let valid = Loader::new(
        Arc::new(test),
        LoaderConfig {
            shuffle: false,
            ..config
        },
    )
    .unwrap();
    let mut trainer = Trainer {
        model: &model,
        store: &store,
        recipe: Recipe {
            optimizer: OptimizerConfig::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            },
            ..Recipe::notebook(2, 0.02)
        },
        transform: InputTransform::notebook(1, 28),
        device: Device::Cpu,
        run: RunInfo {
            input: InputSpec::square(1, 28),
            eval_transform: InputTransform::notebook(1, 28),
            ..run_info(5)
        },
        checkpoint_every: None,
        read_every: None,
        data_parallel: None,
        finetune: None,
    };
    // 2 epochs x 94 batches of real MNIST digits.
    let Outcome::Finished(m) = trainer
        .fit(&train, &valid, &run_dir("mnist"), None, &mut Quiet)
        .unwrap()
    else {
        panic!()
    };
    assert!(
        m[1].train_loss < m[0].train_loss && m[0].train_loss < 2.0,
        "{m:?}"
    );
    assert!(
        m[1].valid_acc > 0.85,
        "accuracy {} after 188 steps (chance is 0.1)",
        m[1].valid_acc
    );
}

/// Counts the steps at which the trainer handed the observer a loss it read.
#[derive(Default)]
struct CountReads {
    steps: usize,
    losses: Vec<f64>,
}

impl TrainObserver for CountReads {
    fn step(&mut self, _batch: usize, loss: Option<f64>) -> Control {
        self.steps += 1;
        self.losses.extend(loss);
        Control::Continue
    }
}

/// One epoch of 8 steps (and an 8-batch evaluation) reading every `read_every` steps: the
/// device reads it made, the observer's record and the epoch's metrics.
fn fit_reading_every(read_every: usize) -> (u64, CountReads, super::metrics::EpochMetrics) {
    let dir = run_dir(&format!("read-every-{read_every}"));
    let store = test_store(5);
    let model = SmallNet::tiny(store.var_builder()).unwrap();
    let loader = Loader::new(
        toy_dataset(128, 3),
        LoaderConfig {
            batch_size: 16,
            ..LoaderConfig::notebook(5)
        },
    )
    .unwrap();
    let mut trainer = Trainer {
        model: &model,
        store: &store,
        recipe: Recipe::notebook(1, 0.05),
        transform: InputTransform::notebook(1, 8),
        device: Device::Cpu,
        run: run_info(5),
        checkpoint_every: None,
        read_every: Some(read_every),
        data_parallel: None,
        finetune: None,
    };
    let mut observer = CountReads::default();
    let before = super::readback::host_reads();
    let outcome = trainer
        .fit(&loader, &loader, &dir, None, &mut observer)
        .unwrap();
    let reads = super::readback::host_reads() - before;
    match outcome {
        Outcome::Finished(metrics) => (reads, observer, metrics[0]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_step_reads_the_device_only_every_read_every_steps() {
    // 8 steps read every 4: 2 reads, plus one for the finite check of the weights at the end
    // of the epoch and one for the whole evaluation.
    let (reads, observer, every4) = fit_reading_every(4);
    assert_eq!(reads, 2 + 1 + 1);
    assert_eq!(observer.steps, 8);
    assert_eq!(observer.losses.len(), 2);
    let (reads, observer, every1) = fit_reading_every(1);
    assert_eq!(reads, 8 + 1 + 1);
    assert_eq!(observer.losses.len(), 8);
    // The totals kept on the device add up to the same epoch either way.
    assert_eq!(every4.train_acc, every1.train_acc);
    assert!((every4.train_loss - every1.train_loss).abs() < 1e-6);
    assert_eq!(every4.valid_acc, every1.valid_acc);
    let mean_of_means = observer.losses.iter().sum::<f64>() / 8.0;
    assert!((mean_of_means - every1.train_loss).abs() < 1e-5);
}

#[test]
fn the_training_step_reads_the_device_only_through_readback() {
    // A review kept as a test: the step's files read the device only via `readback`.
    for (file, source) in [
        ("trainer.rs", include_str!("trainer.rs")),
        ("step.rs", include_str!("step.rs")),
        ("ranks.rs", include_str!("ranks.rs")),
        ("checkpointer.rs", include_str!("checkpointer.rs")),
        ("evaluator.rs", include_str!("evaluator.rs")),
        ("running.rs", include_str!("running.rs")),
        ("optim/mod.rs", include_str!("optim/mod.rs")),
        ("optim/sgd.rs", include_str!("optim/sgd.rs")),
        ("optim/adamw.rs", include_str!("optim/adamw.rs")),
        ("optim/clip.rs", include_str!("optim/clip.rs")),
        ("ema.rs", include_str!("ema.rs")),
        ("loss.rs", include_str!("loss.rs")),
        ("inplace.rs", include_str!("inplace.rs")),
    ] {
        let code = source.split("#[cfg(test)]").next().unwrap();
        for read in [".to_scalar", ".to_vec", "to_vec1", "to_vec2", "to_vec3"] {
            assert!(
                !code.contains(read),
                "train/{file} calls `{read}`: read through train::readback"
            );
        }
    }
}

#[test]
fn the_optimizer_serves_as_candle_nns_with_the_same_steps() -> Result<()> {
    use super::optim::OptimizerSettings;
    use candle_nn::Optimizer as _;
    for optimizer in [
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-2,
        },
        OptimizerConfig::adamw(),
    ] {
        let p = Var::new(&[1.0f32, -2.0, 0.5], &Device::Cpu)?;
        let q = Var::new(&[1.0f32, -2.0, 0.5], &Device::Cpu)?;
        let settings = OptimizerSettings {
            optimizer,
            learning_rate: 0.1,
        };
        let mut through_candle =
            <Optimizer as candle_nn::Optimizer>::new(vec![p.clone()], settings)?;
        let mut direct = Optimizer::new(optimizer, vec![("0".into(), q.clone())])?;
        for _ in 0..3 {
            through_candle.backward_step(&p.as_tensor().sqr()?.sum_all()?)?;
            direct.step(&q.as_tensor().sqr()?.sum_all()?.backward()?, 0.1)?;
        }
        assert_eq!(
            p.as_tensor().to_vec1::<f32>()?,
            q.as_tensor().to_vec1::<f32>()?
        );
        assert_ne!(p.as_tensor().to_vec1::<f32>()?, vec![1.0, -2.0, 0.5]);
        assert_eq!(
            through_candle.state_tensors().len(),
            direct.state_tensors().len()
        );
        through_candle.set_learning_rate(0.5);
        assert_eq!(through_candle.learning_rate(), 0.5);
    }
    Ok(())
}

#[test]
fn an_lr_factor_scales_the_chosen_parameters_updates() -> Result<()> {
    let a = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
    let b = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
    let params = vec![
        ("backbone.w".to_string(), a.clone()),
        ("head.w".to_string(), b.clone()),
    ];
    let mut opt = Optimizer::new(OptimizerConfig::plain_sgd(), params)?
        .with_lr_factor(0.1, |name| name.starts_with("backbone."));
    let loss = (a.as_tensor().sum_all()? + b.as_tensor().sum_all()?)?;
    opt.step(&loss.backward()?, 0.5)?;
    // Gradient 1 everywhere: the head moves by 0.5, the backbone by 0.05.
    assert_eq!(b.as_tensor().to_vec1::<f32>()?, [0.5, 1.5]);
    assert_eq!(a.as_tensor().to_vec1::<f32>()?, [0.95, 1.95]);
    Ok(())
}

/// Hits of the plain view and of the two views' summed logits, counted on the host with each
/// image's columns reversed by hand, and the number of images.
fn flip_hits_by_hand(
    model: &SmallNet,
    valid: &Loader,
    transform: &InputTransform,
) -> Result<(usize, usize, usize)> {
    let dev = Device::Cpu;
    let (mut hits, mut plain_hits, mut seen) = (0usize, 0usize, 0usize);
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            .unwrap()
    };
    for batch in valid.epoch(0, 0) {
        let x = transform.apply(&batch.images_tensor(&dev)?, &dev)?;
        let (n, c, h, w) = x.dims4()?;
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let mirrored: Vec<f32> = (0..v.len())
            .map(|i| v[i - i % w + (w - 1 - i % w)])
            .collect();
        let m = Tensor::from_vec(mirrored, (n, c, h, w), &dev)?;
        let a = model.forward_t(&x, false)?.to_vec2::<f32>()?;
        let b = model.forward_t(&m, false)?.to_vec2::<f32>()?;
        for ((a, b), &label) in a.iter().zip(&b).zip(&batch.labels) {
            let summed: Vec<f32> = a.iter().zip(b).map(|(p, q)| p + q).collect();
            hits += usize::from(argmax(&summed) == label as usize);
            plain_hits += usize::from(argmax(a) == label as usize);
            seen += 1;
        }
    }
    Ok((hits, plain_hits, seen))
}

#[test]
fn flip_test_time_augmentation_counts_the_summed_logits_of_both_views() -> Result<()> {
    use super::evaluator::evaluate_on;
    let dev = Device::Cpu;
    let config = LoaderConfig {
        batch_size: 16,
        shuffle: false,
        ..LoaderConfig::notebook(5)
    };
    let valid = Loader::new(toy_dataset(60, 3), config)?;
    let transform = InputTransform::notebook(1, 8);
    // The first initialisation whose mirrored view changes the number of hits, so that an
    // evaluator ignoring the mirror image (or mirroring rows) gives another count.
    let mut found = None;
    for seed in 5..40 {
        let store = test_store(seed);
        let model = SmallNet::tiny(store.var_builder())?;
        let counts = flip_hits_by_hand(&model, &valid, &transform)?;
        if counts.0 != counts.1 {
            found = Some((model, counts));
            break;
        }
    }
    let (model, (hits, plain_hits, seen)) =
        found.expect("some initialisation's mirrored view changes the hits");
    let plain = evaluate_on(&model, &valid, &transform, &dev, None, false)?;
    let both = evaluate_on(&model, &valid, &transform, &dev, None, true)?;
    assert_eq!(plain.flip_accuracy, None);
    assert_eq!(
        (both.loss, both.accuracy, &both.confusion),
        (plain.loss, plain.accuracy, &plain.confusion),
        "the plain view's figures do not change"
    );
    assert_eq!(plain.accuracy, plain_hits as f64 / seen as f64);
    assert_eq!(both.flip_accuracy, Some(hits as f64 / seen as f64));
    Ok(())
}

/// The one-pass in-place updates over parameters of several parallel chunks equal the same
/// rules in candle's ops (a CPU f64 parameter takes the composed path), step for step.
#[test]
fn one_pass_updates_equal_the_composed_rules_over_many_chunks() -> Result<()> {
    let n = 70_001; // three chunks of the loop, the last one short
    let start: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let scale: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 / 4.0).collect();
    let adamw = OptimizerConfig::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let nesterov = OptimizerConfig::Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    };
    for config in [adamw, nesterov] {
        let mut finals = Vec::new();
        for dtype in [DType::F32, DType::F64] {
            let p =
                Var::from_tensor(&Tensor::new(start.as_slice(), &Device::Cpu)?.to_dtype(dtype)?)?;
            let c = Tensor::new(scale.as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
            let mut opt = Optimizer::new(config, vec![("p".into(), p.clone())])?;
            for _ in 0..3 {
                let loss = (&c * p.as_tensor().sqr()?)?.sum_all()?;
                opt.step(&loss.backward()?, 0.05)?;
            }
            finals.push(p.as_tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        let worst = finals[0]
            .iter()
            .zip(&finals[1])
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "{config:?}: in place vs composed, worst {worst}"
        );
        assert_ne!(finals[0], start, "{config:?}: the parameter did not move");
    }
    Ok(())
}

#[test]
fn a_one_pass_update_names_its_op_when_sizes_differ() -> Result<()> {
    let cpu = &Device::Cpu;
    let p = Tensor::zeros(8, DType::F32, cpu)?;
    let (m, v, g) = (
        p.zeros_like()?,
        Tensor::zeros(7, DType::F32, cpu)?,
        p.ones_like()?,
    );
    let err = super::inplace::step_in_place("zoo-adamw-step", &p, (&m, &v), &g, |_, _, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("zoo-adamw-step") && err.contains("7"), "{err}");
    Ok(())
}

#[test]
fn a_one_pass_update_refuses_state_that_shares_a_storage() -> Result<()> {
    let cpu = &Device::Cpu;
    let p = Tensor::zeros(8, DType::F32, cpu)?;
    let (m, g) = (p.zeros_like()?, p.ones_like()?);
    // The same moment twice, and a clone of it (one storage): an error, not a lock held twice.
    for v in [m.clone(), m.detach()] {
        let err =
            super::inplace::step_in_place("zoo-adamw-step", &p, (&m, &v), &g, |_, _, _, _| {})
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("zoo-adamw-step") && err.contains("share a storage"),
            "{err}"
        );
    }
    Ok(())
}

/// The one-pass AdamW equals, bit for bit, the three passes it replaced (first moment, second
/// moment, then the parameter), written out here per element.
#[test]
fn one_pass_adamw_equals_the_three_passes_bit_for_bit() -> Result<()> {
    let (beta1, beta2, eps, wd, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.05f64, 0.003f64);
    let start = [1.0f32, -2.0, 0.5, 3.0, -0.25];
    let c = [1.0f32, 2.0, 3.0, 0.5, 4.0];
    let p = Var::new(&start, &Device::Cpu)?;
    let config = OptimizerConfig::AdamW {
        beta1,
        beta2,
        eps,
        weight_decay: wd,
    };
    let mut opt = Optimizer::new(config, vec![("p".into(), p.clone())])?;
    let (mut want, mut m, mut v) = (start, [0f32; 5], [0f32; 5]);
    for t in 1..=3 {
        let loss = (Tensor::new(&c, &Device::Cpu)? * p.as_tensor().sqr()?)?.sum_all()?;
        opt.step(&loss.backward()?, lr)?;
        let decay = (1.0 - lr * wd) as f32;
        let rate = (lr / (1.0 - beta1.powi(t))) as f32;
        let root2 = (1.0 - beta2.powi(t)).sqrt() as f32;
        for i in 0..5 {
            let g = c[i] * (want[i] + want[i]);
            m[i] = beta1 as f32 * m[i] + (1.0 - beta1) as f32 * g;
            v[i] = beta2 as f32 * v[i] + (1.0 - beta2) as f32 * (g * g);
            want[i] = want[i] * decay - rate * m[i] / (v[i].sqrt() / root2 + eps as f32);
        }
    }
    assert_eq!(p.as_tensor().to_vec1::<f32>()?, want.to_vec());
    Ok(())
}
