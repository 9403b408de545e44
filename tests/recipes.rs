//! Recipes: every registry model's improved recipe resolves and passes its checks, flags and
//! matrix fields override single values, and bad values are errors that name the flag.

use zoo_cli::matrix::load_matrix;
use zoo_cli::recipe::{OptimizerKind, RecipeName, ScheduleKind};
use zoo_cli::registry;
use zoo_cli::registry::Origin;
use zoo_cli::run_config::{RunSpec, improved_recipe};
use zoo_core::init::InitScheme;
use zoo_core::train::optim::OptimizerConfig;
use zoo_core::train::schedule::Schedule;

fn spec(model: &str, recipe: RecipeName) -> RunSpec {
    RunSpec {
        model: Some(model.into()),
        recipe: Some(recipe),
        ..RunSpec::default()
    }
}

fn error_of(spec: RunSpec) -> String {
    format!("{:#}", spec.resolve("cpu").unwrap_err())
}

#[test]
fn the_improved_recipe_comes_from_its_data_file() {
    for entry in registry().iter().filter(|e| e.origin == Origin::Notebook) {
        let c = spec(entry.name, RecipeName::Improved)
            .resolve("cpu")
            .unwrap();
        let r = improved_recipe(entry.name).unwrap();
        assert_eq!(c.recipe_name, RecipeName::Improved);
        assert_eq!(Some(c.input_size), r.input_size, "{}", entry.name);
        assert_eq!(Some(c.init), r.init);
        assert_eq!(Some(c.recipe.epochs), r.epochs);
        assert_eq!(Some(c.recipe.learning_rate), r.learning_rate);
        assert_eq!(c.recipe.ema_decay, None, "[defaults]: no EMA");
        assert_eq!(
            Some(c.batch_size),
            r.batch_size.or(Some(128)),
            "{}",
            entry.name
        );
        assert_eq!(c.recipe.label_smoothing, 0.1);
        assert!(!c.recipe.decay_1d_params);
        assert_eq!(Some(c.recipe.optimizer.weight_decay()), r.weight_decay);
        assert_eq!(
            c.recipe.schedule,
            Schedule::Cosine {
                warmup_epochs: 1.0,
                min_factor: 0.0
            }
        );
        // Digits are never flipped, in training or in test-time augmentation; natural
        // images get the flipped view's column.
        assert!(
            !(c.augment.hflip && c.dataset.is_digits()),
            "{}",
            entry.name
        );
        assert_eq!(c.recipe.eval_flip, !c.dataset.is_digits(), "{}", entry.name);
    }
    // Per-network values the file sets: AdamW without augmentation for AlexNet, Nesterov SGD
    // for ResNet-18, a 2-pixel crop without flips for NiN on MNIST.
    let resolve = |m: &str| spec(m, RecipeName::Improved).resolve("cpu").unwrap();
    let alexnet = resolve("alexnet");
    assert_eq!(
        alexnet.recipe.optimizer,
        OptimizerConfig::adamw().with_weight_decay(0.05)
    );
    assert!(alexnet.augment.is_none());
    let resnet = resolve("resnet18");
    assert_eq!(
        resnet.recipe.optimizer,
        OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4
        }
    );
    // ResNet-18, DenseNet, GoogLeNet and VGG-11: flips without the crop; ResNet-18 at batch 256.
    for name in ["resnet18", "densenet", "googlenet", "vgg11"] {
        let run = resolve(name);
        assert_eq!(
            (run.augment.crop_padding, run.augment.hflip),
            (None, true),
            "{name}"
        );
    }
    assert_eq!(resnet.batch_size, 256);
    // A network no recipe changed keeps the default crop and flip.
    let resnet34 = resolve("resnet34");
    assert_eq!(
        (resnet34.augment.crop_padding, resnet34.augment.hflip),
        (Some(4), true)
    );
    let digits = resolve("nin-mnist");
    assert_eq!(
        (digits.augment.crop_padding, digits.augment.hflip),
        (Some(2), false)
    );
    assert!(improved_recipe("resnet50").is_err());
    // The notebook's recipe is unchanged.
    let n = spec("resnet18", RecipeName::Notebook)
        .resolve("cpu")
        .unwrap();
    assert_eq!(n.init, InitScheme::XavierUniform);
    assert_eq!(n.recipe.optimizer, OptimizerConfig::plain_sgd());
    assert_eq!(n.recipe.schedule, Schedule::Constant);
    assert_eq!(
        (n.input_size, n.recipe.epochs, n.recipe.learning_rate),
        (224, 10, 0.05)
    );
    assert_eq!(n.recipe.ema_decay, None);
}

#[test]
fn fields_override_single_values_and_keep_the_rest() {
    let base = spec("densenet", RecipeName::Improved)
        .resolve("cpu")
        .unwrap();
    let c = RunSpec {
        learning_rate: Some(0.03),
        epochs: Some(4),
        ema_decay: Some(0.0),
        warmup_epochs: Some(2.0),
        ..spec("densenet", RecipeName::Improved)
    }
    .resolve("cpu")
    .unwrap();
    assert_eq!(c.recipe.learning_rate, 0.03);
    assert_eq!(c.recipe.epochs, 4);
    assert_eq!(c.recipe.ema_decay, None, "0 turns the EMA off");
    assert_eq!(
        c.recipe.schedule,
        Schedule::Cosine {
            warmup_epochs: 2.0,
            min_factor: 0.0
        }
    );
    assert_eq!(c.recipe.optimizer, base.recipe.optimizer);
    assert_eq!(
        (c.init, c.input_size, c.augment),
        (base.init, base.input_size, base.augment)
    );
    // Switching the optimiser keeps the recipe's weight decay unless told otherwise.
    let adamw = RunSpec {
        optimizer: Some(OptimizerKind::Adamw),
        weight_decay: Some(0.05),
        schedule: Some(ScheduleKind::Onecycle),
        ..spec("densenet", RecipeName::Improved)
    }
    .resolve("cpu")
    .unwrap();
    assert!(matches!(
        adamw.recipe.optimizer,
        OptimizerConfig::AdamW { weight_decay, .. } if weight_decay == 0.05
    ));
    assert!(matches!(adamw.recipe.schedule, Schedule::OneCycle { .. }));
    // Matrix defaults fill what an entry leaves unset.
    let entry = RunSpec {
        model: Some("nin".into()),
        ..RunSpec::default()
    };
    let merged = entry.or(&RunSpec {
        recipe: Some(RecipeName::Improved),
        epochs: Some(1),
        ..RunSpec::default()
    });
    let c = merged.resolve("cpu").unwrap();
    assert_eq!((c.recipe_name, c.recipe.epochs), (RecipeName::Improved, 1));
}

#[test]
fn bad_values_name_their_flag() {
    let with = |f: fn(&mut RunSpec)| {
        let mut s = spec("resnet18", RecipeName::Improved);
        f(&mut s);
        error_of(s)
    };
    for (err, flag) in [
        (with(|s| s.learning_rate = Some(f64::NAN)), "--lr"),
        (with(|s| s.learning_rate = Some(f64::INFINITY)), "--lr"),
        (with(|s| s.learning_rate = Some(-0.1)), "--lr"),
        (with(|s| s.momentum = Some(-0.5)), "--momentum"),
        (with(|s| s.momentum = Some(1.0)), "--momentum"),
        (with(|s| s.weight_decay = Some(-1e-4)), "--weight-decay"),
        (with(|s| s.label_smoothing = Some(1.5)), "--label-smoothing"),
        (with(|s| s.clip_grad_norm = Some(-1.0)), "--clip-grad-norm"),
        (
            with(|s| s.warmup_epochs = Some(f64::NAN)),
            "--warmup-epochs",
        ),
        (with(|s| s.epochs = Some(0)), "--epochs"),
        (with(|s| s.batch_size = Some(0)), "--batch-size"),
        (with(|s| s.input_size = Some(100_000)), "--input-size"),
        (with(|s| s.ema_decay = Some(1.0)), "--ema-decay"),
        (
            with(|s| {
                s.dataset = Some("mnist".parse().unwrap());
                s.eval_flip = Some(true)
            }),
            "--eval-flip",
        ),
        // Flags the chosen optimiser or schedule would ignore.
        (
            with(|s| {
                s.optimizer = Some(OptimizerKind::Adamw);
                s.momentum = Some(0.9)
            }),
            "--momentum",
        ),
        (
            with(|s| {
                s.schedule = Some(ScheduleKind::Constant);
                s.warmup_epochs = Some(1.0)
            }),
            "--warmup-epochs",
        ),
        (
            with(|s| {
                s.momentum = Some(0.0);
                s.nesterov = Some(true)
            }),
            "--nesterov",
        ),
    ] {
        assert!(err.contains(flag), "expected {flag} in: {err}");
    }
    let err = error_of(RunSpec {
        input_size: Some(32),
        ..spec("alexnet", RecipeName::Improved)
    });
    assert!(err.contains("65 to 2048 for alexnet"), "{err}");
    let err = error_of(spec("resnet99", RecipeName::Improved));
    assert!(err.contains("unknown model `resnet99`"), "{err}");
}

#[test]
fn an_unknown_recipe_or_field_in_a_matrix_is_a_clear_error() {
    let dir = zoo_core::testing::scratch_dir("recipes");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let path = write(
        "recipe.toml",
        "name = \"m\"\n[[run]]\nmodel = \"nin\"\nrecipe = \"modern\"\n",
    );
    let err = format!("{:#}", load_matrix(&path).unwrap_err());
    assert!(
        err.contains("modern") && err.contains("notebook") && err.contains("improved"),
        "{err}"
    );
    let path = write(
        "field.toml",
        "name = \"m\"\n[[run]]\nmodel = \"nin\"\nlearning_rat = 0.1\n",
    );
    let err = format!("{:#}", load_matrix(&path).unwrap_err());
    assert!(err.contains("learning_rat"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_preset_matrix_resolves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/matrices");
    for preset in ["cpu", "cpu-notebook", "smoke", "reference"] {
        let matrix = load_matrix(&root.join(format!("{preset}.toml"))).unwrap();
        assert_eq!(matrix.name, preset);
        for run in &matrix.runs {
            run.or(&matrix.defaults)
                .resolve("cpu")
                .unwrap_or_else(|e| panic!("{preset}: {e:#}"));
        }
    }
    // The main job trains on full data with the improved recipes.
    let cpu = load_matrix(&root.join("cpu.toml")).unwrap();
    for run in &cpu.runs {
        let c = run.or(&cpu.defaults).resolve("cpu").unwrap();
        assert_eq!(c.recipe_name, RecipeName::Improved);
        assert_eq!((c.train_per_class, c.valid_per_class), (None, None));
    }
}

#[test]
fn flags_matrix_fields_and_recipe_files_are_one_list() {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        spec: RunSpec,
    }
    let from_flags = Flags::try_parse_from([
        "zoo-train",
        "--lr",
        "0.3",
        "--epochs",
        "3",
        "--crop-padding",
        "2",
        "--augment",
        "--init",
        "kaiming-normal-fan-in",
        "--optimizer",
        "adamw",
        "--ema-decay",
        "0",
    ])
    .unwrap()
    .spec;
    let from_toml: RunSpec = toml::from_str(
        "learning_rate = 0.3\nepochs = 3\ncrop_padding = 2\naugment = true\n\
         init = \"kaiming-normal-fan-in\"\noptimizer = \"adamw\"\nema_decay = 0.0\n",
    )
    .unwrap();
    assert_eq!(from_flags, from_toml);
    // Merging is field by field: the entry's values win, the defaults fill the rest.
    let merged = RunSpec {
        epochs: Some(9),
        ..RunSpec::default()
    }
    .or(&from_toml);
    assert_eq!(merged.epochs, Some(9));
    assert_eq!(merged.learning_rate, Some(0.3));
    assert_eq!(merged.crop_padding, Some(2));
}
