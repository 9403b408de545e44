//! Tests of the collective interface and of data-parallel training: the thread backend's
//! all-reduce and broadcast, batch slices, and N ranks of B/N images against one of B.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use candle_nn::ModuleT;

use super::local::ThreadGroup;
use super::sync::{all_reduce_grads, buckets};
use super::{Collective, DataParallel, Shard};
use crate::data::augment::Augment;
use crate::data::digit_classes;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::transforms::InputTransform;
use crate::init::ParamStore;
use crate::model::InputSpec;
use crate::nn::BatchNorm2d;
use crate::testing::{SmallNet, test_store, toy_dataset};
use crate::train::checkpoint::{RunInfo, load_checkpoint};
use crate::train::metrics::EpochMetrics;
use crate::train::optim::OptimizerConfig;
use crate::train::schedule::Schedule;
use crate::train::trainer::{Outcome, Quiet, Recipe, StopAfterSteps, TrainObserver, Trainer};

/// Runs `f(rank's handle)` on `world` threads and returns their results in rank order.
fn on_ranks<T: Send>(world: usize, f: impl Fn(&dyn Collective) -> T + Sync) -> Vec<T> {
    let handles = ThreadGroup::new(world).unwrap();
    std::thread::scope(|s| {
        let joins: Vec<_> = handles.iter().map(|h| s.spawn(|| f(h))).collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    })
}

/// As [`on_ranks`], with each rank's handle shared (what a trainer takes).
fn on_shared_ranks<T: Send>(world: usize, f: impl Fn(Arc<dyn Collective>) -> T + Sync) -> Vec<T> {
    let handles = ThreadGroup::new(world).unwrap();
    std::thread::scope(|s| {
        let joins: Vec<_> = handles
            .into_iter()
            .map(|h| {
                let f = &f;
                s.spawn(move || f(Arc::new(h)))
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    })
}

/// A rank's test vector: distinct values per rank and position.
fn values(rank: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (rank * 1000 + i) as f32 * 0.5 - 3.0)
        .collect()
}

#[test]
fn all_reduce_and_broadcast_agree_with_a_hand_sum_for_one_to_four_ranks() {
    for world in 1..=4 {
        for n in [1, 7, 1023] {
            let results = on_ranks(world, |c| {
                let t = Tensor::new(values(c.rank(), n), &Device::Cpu).unwrap();
                let sum = c.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap();
                let root = world - 1;
                let b = c.broadcast(&t, root).unwrap().to_vec1::<f32>().unwrap();
                c.barrier().unwrap();
                (sum, b)
            });
            let expected: Vec<f32> = (0..n)
                .map(|i| (0..world).map(|r| values(r, n)[i]).sum())
                .collect();
            for (rank, (sum, b)) in results.iter().enumerate() {
                assert_eq!(sum, &expected, "world {world}, n {n}, rank {rank}");
                assert_eq!(
                    b,
                    &values(world - 1, n),
                    "world {world}, n {n}, rank {rank}"
                );
            }
        }
    }
}

#[test]
fn mismatched_sizes_and_a_missing_rank_are_errors_not_hangs() {
    let errors = on_ranks(2, |c| {
        let t = Tensor::new(values(c.rank(), 3 + c.rank()), &Device::Cpu).unwrap();
        c.all_reduce_sum(&t).map(|_| ()).unwrap_err().to_string()
    });
    for e in errors {
        assert!(e.contains("rank 0 sent 3 values, rank 1 sent 4"), "{e}");
    }
    let handles = ThreadGroup::with_timeout(2, std::time::Duration::from_millis(50)).unwrap();
    let e = handles[0].barrier().unwrap_err().to_string();
    assert!(
        e.contains("rank 0 waited") && e.contains("for the other 1 ranks"),
        "{e}"
    );
    assert!(Shard::new(2, 2).is_err() && Shard::new(0, 0).is_err());
}

#[test]
fn buckets_are_consecutive_and_capped() {
    // 4-byte elements: a cap of 40 bytes holds 10.
    assert_eq!(
        buckets(&[3, 4, 3, 1, 20, 2], 40),
        vec![0..3, 3..4, 4..5, 5..6]
    );
    assert_eq!(buckets(&[3, 4], 1 << 20), vec![0..2]);
    assert_eq!(buckets(&[], 40), Vec::<std::ops::Range<usize>>::new());
}

#[test]
fn gradients_in_several_buckets_are_weighted_and_summed() {
    let shapes: [&[usize]; 4] = [&[2, 3], &[5], &[1], &[4, 2]];
    let results = on_ranks(3, |c| {
        let params: Vec<(String, Var)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("p{i}"),
                    Var::zeros(*s, candle_core::DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        let mut grads = candle_core::backprop::GradStore::default();
        for (i, (_, v)) in params.iter().enumerate() {
            // Rank 1 has no gradient for p2 (as a rank with no images has none at all).
            if !(c.rank() == 1 && i == 2) {
                let n = v.elem_count();
                let g = Tensor::new(values(c.rank() + i, n), &Device::Cpu)
                    .unwrap()
                    .reshape(v.shape())
                    .unwrap();
                grads.insert(v, g);
            }
        }
        let weight = [0.25, 0.25, 0.5][c.rank()];
        // A 24-byte cap: six values a bucket, so the four tensors travel in three buckets.
        all_reduce_grads(c, &mut grads, &params, weight, 24).unwrap();
        params
            .iter()
            .map(|(_, v)| {
                grads
                    .get(v)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    });
    for (i, s) in shapes.iter().enumerate() {
        let n: usize = s.iter().product();
        let expected: Vec<f32> = (0..n)
            .map(|j| {
                (0..3)
                    .filter(|&r| !(r == 1 && i == 2))
                    .map(|r| [0.25f32, 0.25, 0.5][r] * values(r + i, n)[j])
                    .sum()
            })
            .collect();
        for rank in 0..3 {
            let got = &results[rank][i];
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "p{i} rank {rank}: {got:?} vs {expected:?}"
                );
            }
            assert_eq!(got, &results[0][i], "ranks agree bitwise");
        }
    }
}

#[test]
fn shards_cover_each_batch_once_and_ranks_see_the_one_process_augmentation() {
    for n in [0, 1, 5, 16] {
        for world in 1..=4 {
            let ranges: Vec<_> = (0..world)
                .map(|r| Shard::new(r, world).unwrap().range(n))
                .collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[world - 1].end, n);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            assert!(ranges.iter().all(|r| r.len() <= n.div_ceil(world)));
        }
    }
    let config = LoaderConfig {
        batch_size: 16,
        augment: Augment::CROP_FLIP,
        ..LoaderConfig::notebook(5)
    };
    let whole = Loader::new(toy_dataset(98, 1), config).unwrap();
    let world = 3;
    let ranks: Vec<Vec<_>> = (0..world)
        .map(|r| {
            whole
                .clone()
                .sharded(Shard::new(r, world).unwrap())
                .epoch(1, 0)
                .collect()
        })
        .collect();
    for (b, batch) in whole.epoch(1, 0).enumerate() {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for rank in &ranks {
            assert_eq!(rank.len(), whole.num_batches());
            assert_eq!(rank[b].global_len, batch.len());
            images.extend_from_slice(&rank[b].images);
            labels.extend_from_slice(&rank[b].labels);
        }
        assert_eq!(
            (images, labels),
            (batch.images.clone(), batch.labels.clone()),
            "batch {b}"
        );
    }
    // 98 = 6 x 16 + 2: the last batch leaves rank 0 of 3 with nothing.
    assert!(ranks[0].last().unwrap().is_empty());
}

fn run_dir(name: &str) -> crate::testing::ScratchDir {
    crate::testing::scratch_dir(&format!("ddp-{name}"))
}

/// What one rank ended with.
struct RankResult {
    weights: HashMap<String, Vec<f32>>,
    outcome: Outcome,
}

/// How a test run trains.
#[derive(Clone, Copy)]
struct Setup {
    batch_norm: bool,
    /// Synchronised BatchNorm (when data-parallel).
    sync_bn: bool,
    dropout: bool,
    epochs: usize,
    stop_after: Option<u64>,
    resume: bool,
}

/// Trains SmallNet on 98 toy images in batches of 16 (the last one 2 images) with Nesterov
/// momentum, weight decay, clipping and label smoothing, as rank `c` (or alone with `None`).
fn train_rank(dir: &std::path::Path, setup: Setup, c: Option<Arc<dyn Collective>>) -> RankResult {
    let store: ParamStore = test_store(23);
    let model = SmallNet::new(store.var_builder(), 6, setup.batch_norm, setup.dropout).unwrap();
    let shard = c.as_deref().map_or(Shard::WHOLE, Shard::of);
    let config = LoaderConfig {
        batch_size: 16,
        augment: Augment::CROP_FLIP,
        ..LoaderConfig::notebook(23)
    };
    let train = Loader::new(toy_dataset(98, 1), config)
        .unwrap()
        .sharded(shard);
    let valid = Loader::new(
        toy_dataset(37, 2),
        LoaderConfig {
            shuffle: false,
            augment: Augment::NONE,
            ..config
        },
    )
    .unwrap()
    .sharded(shard);
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
        clip_grad_norm: Some(1.0),
        label_smoothing: 0.1,
        ..Recipe::notebook(setup.epochs, 0.05)
    };
    let mut trainer = Trainer {
        model: &model,
        store: &store,
        recipe,
        transform: InputTransform::notebook(1, 8),
        device: Device::Cpu,
        run: RunInfo::new(
            "small",
            InputSpec::square(1, 8),
            digit_classes(),
            InputTransform::notebook(1, 8),
            String::new(),
            23,
        ),
        checkpoint_every: None,
        read_every: None,
        data_parallel: c.map(|c| DataParallel {
            collective: c,
            sync_batch_norm: setup.sync_bn,
        }),
        finetune: None,
    };
    let resume = setup
        .resume
        .then(|| load_checkpoint(&Trainer::last_path(dir), &Device::Cpu).unwrap());
    let mut quiet = Quiet;
    let mut stopper = setup.stop_after.map(|n| StopAfterSteps::new(n, &mut quiet));
    let observer: &mut dyn TrainObserver = match &mut stopper {
        Some(s) => s,
        None => &mut Quiet,
    };
    let outcome = trainer.fit(&train, &valid, dir, resume, observer).unwrap();
    let weights = store
        .named_tensors()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    RankResult { weights, outcome }
}

fn on_threads(world: usize, dir: &std::path::Path, setup: Setup) -> Vec<RankResult> {
    on_shared_ranks(world, |c| train_rank(dir, setup, Some(c)))
}

/// The largest of |a - b| / max(|b|) over each tensor, where max(|b|) is the tensor's scale.
fn max_relative_difference(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.len(), b.len());
    b.iter()
        .map(|(name, bv)| {
            let av = &a[name];
            let scale = bv.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            av.iter()
                .zip(bv)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
        })
        .fold(0f32, f32::max)
}

fn metrics(outcome: &Outcome) -> &[EpochMetrics] {
    match outcome {
        Outcome::Finished(m) => m,
        other => panic!("expected a finished run, got {other:?}"),
    }
}

const NO_BN: Setup = Setup {
    batch_norm: false,
    sync_bn: false,
    dropout: false,
    epochs: 2,
    stop_after: None,
    resume: false,
};

#[test]
fn n_ranks_of_b_over_n_images_end_where_one_rank_of_b_does() {
    let single = train_rank(&run_dir("single"), NO_BN, None);
    for world in [2, 3, 4] {
        let dir = run_dir(&format!("world{world}"));
        let ranks = on_threads(world, &dir, NO_BN);
        let diff = max_relative_difference(&ranks[0].weights, &single.weights);
        assert!(diff <= 1e-5, "world {world}: relative difference {diff}");
        // It learned something, so the comparison is not of two untouched networks.
        let m = metrics(&ranks[0].outcome);
        assert!(m[1].train_loss < m[0].train_loss, "{m:?}");
        for (rank, r) in ranks.iter().enumerate() {
            assert_eq!(
                r.weights, ranks[0].weights,
                "world {world}: rank {rank} differs bitwise"
            );
            // Metrics are all-reduced: every rank reports the whole batch's figures.
            assert_eq!(metrics(&r.outcome).len(), 2);
            for (a, b) in metrics(&r.outcome).iter().zip(metrics(&ranks[0].outcome)) {
                assert_eq!(
                    (a.train_loss, a.train_acc, a.valid_acc),
                    (b.train_loss, b.train_acc, b.valid_acc)
                );
            }
        }
        for (a, b) in m.iter().zip(metrics(&single.outcome)) {
            assert!((a.train_loss - b.train_loss).abs() < 1e-4, "{a:?} vs {b:?}");
            assert!((a.valid_loss - b.valid_loss).abs() < 1e-4, "{a:?} vs {b:?}");
        }
        // Rank 0 alone wrote the run's files, and they hold its weights.
        let last = load_checkpoint(&Trainer::last_path(&dir), &Device::Cpu).unwrap();
        assert_eq!(last.meta.progress.epoch, 2);
        assert!(dir.join("metrics.csv").is_file());
    }
}

#[test]
fn a_world_of_one_is_the_one_process_trainer_bit_for_bit() {
    let setup = Setup {
        batch_norm: true,
        dropout: true,
        ..NO_BN
    };
    let alone = train_rank(&run_dir("alone"), setup, None);
    let group = on_threads(1, &run_dir("group-of-one"), setup);
    assert_eq!(group[0].weights, alone.weights);
    let figures = |o: &Outcome| -> Vec<[f64; 5]> {
        metrics(o)
            .iter()
            .map(|m| [m.train_loss, m.train_acc, m.valid_loss, m.valid_acc, m.lr])
            .collect()
    };
    assert_eq!(figures(&group[0].outcome), figures(&alone.outcome));
}

#[test]
fn synchronised_batch_norm_makes_n_ranks_train_as_one_process() {
    let setup = Setup {
        batch_norm: true,
        sync_bn: true,
        ..NO_BN
    };
    let single = train_rank(&run_dir("sync-single"), setup, None);
    // 98 images in batches of 16: the last batch has 2, one for each of two ranks.
    let ranks = on_threads(2, &run_dir("sync"), setup);
    let diff = max_relative_difference(&ranks[0].weights, &single.weights);
    assert!(diff <= 1e-5, "relative difference {diff}");
    assert_eq!(ranks[1].weights, ranks[0].weights);
    // Per-rank statistics (DDP's default) end elsewhere: the synchronisation is what matters.
    let local = on_threads(
        2,
        &run_dir("unsynced"),
        Setup {
            sync_bn: false,
            ..setup
        },
    );
    let apart = max_relative_difference(&local[0].weights, &single.weights);
    assert!(
        apart > 1e-3,
        "per-rank BatchNorm ended {apart} from one process"
    );
    // Three ranks cannot all have an image of the last batch.
    let errors = on_shared_ranks(3, |c| {
        let store: ParamStore = test_store(23);
        let model = SmallNet::new(store.var_builder(), 6, true, false).unwrap();
        let config = LoaderConfig {
            batch_size: 16,
            ..LoaderConfig::notebook(1)
        };
        let loader = Loader::new(toy_dataset(98, 1), config)
            .unwrap()
            .sharded(Shard::of(&*c));
        let transform = InputTransform::notebook(1, 8);
        let mut trainer = Trainer {
            model: &model,
            store: &store,
            recipe: Recipe::notebook(1, 0.05),
            transform: transform.clone(),
            device: Device::Cpu,
            run: RunInfo::new(
                "small",
                InputSpec::square(1, 8),
                digit_classes(),
                transform,
                String::new(),
                1,
            ),
            checkpoint_every: None,
            read_every: None,
            data_parallel: Some(DataParallel::new(c)),
            finetune: None,
        };
        match trainer.fit(&loader, &loader, &run_dir("sync-three"), None, &mut Quiet) {
            Err(e) => e.to_string(),
            Ok(o) => format!("trained: {o:?}"),
        }
    });
    for e in errors {
        assert!(
            e.contains("the last batch has 2 images, fewer than the 3 ranks"),
            "{e}"
        );
    }
}

#[test]
fn ranks_with_batch_norm_and_dropout_stay_identical() {
    let setup = Setup {
        batch_norm: true,
        dropout: true,
        ..NO_BN
    };
    let ranks = on_threads(3, &run_dir("bn"), setup);
    for r in &ranks[1..] {
        // Parameters and (broadcast before evaluation) BatchNorm statistics.
        assert_eq!(r.weights, ranks[0].weights);
    }
    assert!(ranks[0].weights.keys().any(|k| k.ends_with("running_mean")));
    let m = metrics(&ranks[0].outcome);
    assert!(m[1].train_loss < m[0].train_loss, "{m:?}");
}

#[test]
fn a_run_resumes_at_another_world_size() {
    let straight = train_rank(&run_dir("straight"), NO_BN, None);
    let dir = run_dir("resized");
    // Two ranks stop in the middle of the first epoch (step 4 of 7); three ranks finish it.
    let first = on_threads(
        2,
        &dir,
        Setup {
            stop_after: Some(4),
            ..NO_BN
        },
    );
    assert_eq!(
        first[0].outcome,
        Outcome::Interrupted { epoch: 0, batch: 4 }
    );
    let second = on_threads(
        3,
        &dir,
        Setup {
            resume: true,
            ..NO_BN
        },
    );
    let diff = max_relative_difference(&second[0].weights, &straight.weights);
    assert!(diff <= 1e-5, "relative difference {diff}");
    let resumed = metrics(&second[0].outcome);
    assert_eq!(resumed.len(), 2);
    assert!((resumed[0].train_loss - metrics(&straight.outcome)[0].train_loss).abs() < 1e-4);
}

/// BatchNorm's output and gradients (input, weight, bias) on a batch, fused, and on its
/// halves in two synchronised ranks: equal to f32 rounding, with and without the ReLU, at
/// 8x8 and 1x1 planes.
#[test]
fn a_synchronised_batch_norm_layer_equals_one_over_the_whole_batch() {
    let run = |x: &Tensor, up: &Tensor, relu: bool, c: Option<&Arc<dyn Collective>>| {
        let store = test_store(5);
        let context = zoo_nn::ForwardContext::default();
        if let Some(c) = c {
            context.set_batch_norm_group(Some(super::sync_norm::batch_norm_group(c)));
        }
        let bn = BatchNorm2d::new(x.dim(1).unwrap(), store.var_builder(), &context).unwrap();
        let x = Var::from_tensor(x).unwrap();
        let forward = || {
            if relu {
                crate::nn::Layer::forward_relu_t(&bn, x.as_tensor(), true)
            } else {
                bn.forward_t(x.as_tensor(), true)
            }
        };
        let y = forward().unwrap();
        let grads = (&y * up).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y, grads.get(x.as_tensor()).unwrap().clone()];
        for (_, v) in store.trainable() {
            out.push(grads.get(&v).unwrap().clone());
        }
        for (_, v) in store.named_tensors() {
            out.push(v.as_tensor().clone()); // running statistics too
        }
        out
    };
    for (shape, relu) in [([12usize, 5, 8, 8], true), ([12, 7, 1, 1], false)] {
        let x = crate::testing::test_input(&shape, 1).unwrap();
        let up = crate::testing::test_input(&shape, 2).unwrap();
        let whole = run(&x, &up, relu, None);
        let halves = on_shared_ranks(2, |c| {
            let part = |t: &Tensor| t.narrow(0, c.rank() * 6, 6).unwrap();
            run(&part(&x), &part(&up), relu, Some(&c))
        });
        // Output and input gradient: this rank's half; parameter gradients: summed over ranks
        // (what data-parallel training does); running statistics: equal on each.
        for (i, want) in whole.iter().enumerate() {
            let got = match i {
                0 | 1 => Tensor::cat(&[&halves[0][i], &halves[1][i]], 0).unwrap(),
                2 | 3 => (&halves[0][i] + &halves[1][i]).unwrap(),
                _ => halves[1][i].clone(),
            };
            crate::testing::assert_close(&format!("{shape:?} output {i}"), &got, want, 2e-5);
        }
    }
}
