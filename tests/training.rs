//! End-to-end training through the CLI crate: a tiny matrix on the committed data sample
//! (files, report, skipping complete runs), then `zoo eval` and `zoo predict` on its checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;

use zoo_cli::training::Placement;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(name: &str) -> zoo_core::testing::ScratchDir {
    zoo_core::testing::scratch_dir(&format!("e2e-{name}"))
}

#[test]
fn tiny_matrix_end_to_end_then_eval_and_predict() {
    let dir = scratch("matrix");
    let matrix = dir.join("tiny.toml");
    std::fs::write(
        &matrix,
        "name = \"tiny\"\n[defaults]\nepochs = 2\nbatch_size = 16\ntrain_per_class = 3\nvalid_per_class = 2\n\
         [[run]]\nmodel = \"densenet\"\ninput_size = 32\n[[run]]\nmodel = \"nin-mnist\"\ndataset = \"mnist\"\ninput_size = 67\n",
    )
    .unwrap();
    let runs = dir.join("runs");
    let samples = repo().join("samples");
    // An empty data root: the committed sample is used, and the report says so.
    let empty_root = dir.join("no-data");
    let train_all = || {
        zoo_cli::matrix::train_all(
            &matrix,
            &runs,
            &empty_root,
            &samples,
            "cpu",
            None,
            &Placement::ALONE,
        )
        .unwrap()
        .expect("rank 0 reports")
    };
    let report = train_all();
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("NOTICE: cifar10 was not found"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| `")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].starts_with("| `densenet` | cifar10 | notebook | 32 px | 30 | 20 | 764,498 | 2 |"),
        "{}",
        rows[0]
    );
    assert!(text.contains("![validation accuracy against time](accuracy_vs_time.png)"));
    for figure in ["accuracy_vs_time.png", "accuracy_vs_epoch.png"] {
        assert!(runs.join("tiny").join(figure).is_file(), "{figure}");
    }
    for run in ["densenet-cifar10", "nin-mnist-mnist"] {
        for file in [
            "config.toml",
            "metrics.csv",
            "curves.png",
            "last.safetensors",
            "best.safetensors",
        ] {
            assert!(
                runs.join("tiny").join(run).join(file).is_file(),
                "{run}/{file}"
            );
        }
    }
    // Complete runs are skipped: the checkpoint is not rewritten.
    let last = runs.join("tiny/densenet-cifar10/last.safetensors");
    let before = std::fs::read(&last).unwrap();
    train_all();
    assert_eq!(std::fs::read(&last).unwrap(), before);

    // zoo eval: accuracy, per-class accuracy, confusion matrix on the sample's test split.
    let zoo = env!("CARGO_BIN_EXE_zoo");
    let out = Command::new(zoo)
        .args(["eval", "--checkpoint"])
        .arg(&last)
        .arg("--data-dir")
        .arg(&samples)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("densenet on cifar10 (test)") && text.contains("confusion matrix"),
        "{text}"
    );
    // 10 rows of the matrix, each summing to the 50 test images of a class.
    let counts: Vec<usize> = text
        .lines()
        .skip_while(|l| !l.starts_with("confusion"))
        .skip(2)
        .map(|l| {
            l.split_whitespace()
                .skip(2)
                .map(|v| v.parse::<usize>().unwrap())
                .sum()
        })
        .collect();
    assert_eq!(counts, vec![50; 10]);
    // --flip adds the test-time-augmented accuracy and leaves the plain one as it was.
    let out = Command::new(zoo)
        .args(["eval", "--flip", "--checkpoint"])
        .arg(&last)
        .arg("--data-dir")
        .arg(&samples)
        .output()
        .unwrap();
    let flipped = String::from_utf8_lossy(&out.stdout);
    let first_line = |t: &str| t.lines().nth(1).unwrap_or_default().to_string();
    assert!(
        first_line(&flipped).starts_with(&first_line(&text))
            && first_line(&flipped).contains("flip-TTA accuracy 0."),
        "{flipped}"
    );
    // Never on digits: refused naming the flag, before anything is loaded.
    let out = Command::new(zoo)
        .args(["eval", "--flip", "--dataset", "mnist", "--checkpoint"])
        .arg(&last)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--flip"),
        "{stderr}"
    );

    // zoo predict --json: the checkpoint carries its transform; top-5 sorted, 10 logits.
    let image = dir.join("img.png");
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 90])
    })
    .save(&image)
    .unwrap();
    let out = Command::new(zoo)
        .args(["predict", "--json", "--checkpoint"])
        .arg(&last)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top5 = json[0]["top5"].as_array().unwrap();
    assert_eq!(top5.len(), 5);
    let probs: Vec<f64> = top5.iter().map(|p| p[1].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-6);
    assert_eq!(json[0]["logits"].as_array().unwrap().len(), 10);
    // A missing checkpoint is a clear error.
    let out = Command::new(zoo)
        .args(["predict", "--checkpoint", "nope.safetensors"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.safetensors: cannot read"));

    // zoo eval on a dataset whose class names differ from the checkpoint's: refused, by name.
    let pets = dir.join("pets-root");
    for (i, class) in [
        "ant", "bee", "cow", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay",
    ]
    .iter()
    .enumerate()
    {
        let folder = pets.join("pets/test").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        image::RgbImage::from_pixel(32, 32, image::Rgb([i as u8 * 20, 0, 0]))
            .save(folder.join("0.png"))
            .unwrap();
    }
    let out = Command::new(zoo)
        .args(["eval", "--dataset", "pets", "--checkpoint"])
        .arg(&last)
        .arg("--data-dir")
        .arg(&pets)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("have different classes")
            && stderr.contains("\"airplane\"")
            && stderr.contains("\"ant\""),
        "{stderr}"
    );
    // zoo eval without --dataset on a damaged checkpoint reports the damage, not "--dataset".
    let damaged = dir.join("damaged.safetensors");
    std::fs::write(&damaged, &before[..before.len() / 2]).unwrap();
    let out = Command::new(zoo)
        .args(["eval", "--checkpoint"])
        .arg(&damaged)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("damaged.safetensors") && !stderr.contains("--dataset is needed"),
        "{stderr}"
    );
}

/// VGG-11-small at 32 px, 2 epochs of 20 sample images in batches of 8, on the CPU.
fn tiny_vgg_config() -> zoo_cli::run_config::RunConfig {
    let mut config = zoo_cli::run_config::RunConfig::notebook("vgg11-small", Some(32)).unwrap();
    config.recipe.epochs = 2;
    config.batch_size = 8;
    config.train_per_class = Some(2);
    config.valid_per_class = Some(1);
    config.device = "cpu".into();
    config
}

#[test]
fn resumed_cli_run_matches_an_uninterrupted_one() {
    use zoo_cli::training::run_training;
    use zoo_core::train::trainer::{Outcome, Quiet, StopAfterSteps};
    let samples = repo().join("samples");
    let mut config = tiny_vgg_config();
    let straight = scratch("straight");
    let interrupted = scratch("interrupted");
    assert!(matches!(
        run_training(
            &config,
            &samples,
            &straight,
            false,
            &Placement::ALONE,
            &mut Quiet
        )
        .unwrap(),
        Outcome::Finished(_)
    ));
    // 20 images / 8 = 3 batches per epoch: stop after 4 steps (epoch 2, batch 1), then resume.
    let stopped = run_training(
        &config,
        &samples,
        &interrupted,
        false,
        &Placement::ALONE,
        &mut StopAfterSteps::new(4, &mut Quiet),
    )
    .unwrap();
    assert_eq!(stopped, Outcome::Interrupted { epoch: 1, batch: 1 });
    assert!(matches!(
        run_training(
            &config,
            &samples,
            &interrupted,
            true,
            &Placement::ALONE,
            &mut Quiet
        )
        .unwrap(),
        Outcome::Finished(_)
    ));
    let a = zoo_core::train::checkpoint::load_checkpoint(
        &straight.join("last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let b = zoo_core::train::checkpoint::load_checkpoint(
        &interrupted.join("last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for (name, t) in &a.model {
        let diff = zoo_core::testing::max_abs_diff(t, &b.model[name]).unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
    // Resuming with other settings is refused.
    config.recipe.learning_rate = 0.5;
    let err = run_training(
        &config,
        &samples,
        &interrupted,
        true,
        &Placement::ALONE,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("was written by another configuration"),
        "{err:#}"
    );
}

#[test]
fn a_run_folder_is_locked_and_a_finished_run_is_made_whole() {
    use zoo_cli::run_folder::{LOCK_FILE, RunLock};
    use zoo_cli::training::run_training;
    use zoo_core::train::trainer::{Outcome, Quiet};
    let samples = repo().join("samples");
    let config = tiny_vgg_config();
    let dir = scratch("locked");
    // Held by a live process (this one): refused, naming it.
    let lock = RunLock::acquire(&dir).unwrap();
    let err = run_training(
        &config,
        &samples,
        &dir,
        false,
        &Placement::ALONE,
        &mut Quiet,
    )
    .unwrap_err();
    let pid = std::process::id();
    assert!(
        format!("{err:#}").contains(&format!("in use by process {pid}")),
        "{err:#}"
    );
    drop(lock);
    assert!(!dir.join(LOCK_FILE).exists());
    // A stale lock (its process is gone) is removed and the run goes ahead.
    std::fs::write(dir.join(LOCK_FILE), "4000000000\n").unwrap();
    assert!(matches!(
        run_training(
            &config,
            &samples,
            &dir,
            false,
            &Placement::ALONE,
            &mut Quiet
        )
        .unwrap(),
        Outcome::Finished(_)
    ));
    assert!(!dir.join(LOCK_FILE).exists(), "the lock goes with the run");
    // Outputs lost after the last checkpoint was written: resuming rewrites them.
    let last = zoo_core::train::checkpoint::load_checkpoint(
        &dir.join("last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let m = &last.meta.progress.metrics;
    let last_is_best = m[1].best_valid_acc() > m[0].best_valid_acc();
    let csv_before = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    for file in ["metrics.csv", "curves.png", "best.safetensors"] {
        std::fs::remove_file(dir.join(file)).unwrap();
    }
    assert!(matches!(
        run_training(&config, &samples, &dir, true, &Placement::ALONE, &mut Quiet).unwrap(),
        Outcome::Finished(_)
    ));
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.csv")).unwrap(),
        csv_before
    );
    assert!(dir.join("curves.png").is_file());
    assert_eq!(dir.join("best.safetensors").is_file(), last_is_best);
}
