//! Bad input at the edges of the matrix runner and the `zoo train` flags: each fails with a
//! message naming the flag, field or name, before anything is written.

use std::process::Command;

use zoo_cli::matrix::{load_matrix, train_all};
use zoo_cli::training::Placement;

fn scratch(name: &str) -> zoo_core::testing::ScratchDir {
    zoo_core::testing::scratch_dir(&format!("edges-{name}"))
}

#[test]
fn a_matrix_name_is_a_plain_folder_name() {
    let dir = scratch("names");
    for bad in ["../../x", "a/b", "", ".hidden", "..", "a\\\\b"] {
        let path = dir.join("m.toml");
        let text = format!("name = \"{bad}\"\n[[run]]\nmodel = \"nin\"\n");
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", load_matrix(&path).unwrap_err());
        assert!(
            err.contains("field `name`") && err.contains("not a plain name"),
            "{bad}: {err}"
        );
    }
    std::fs::write(
        dir.join("m.toml"),
        "name = \"cpu-2\"\n[[run]]\nmodel = \"nin\"\n",
    )
    .unwrap();
    assert_eq!(load_matrix(&dir.join("m.toml")).unwrap().name, "cpu-2");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_a_model_the_matrix_lacks_fails_naming_both() {
    let dir = scratch("only");
    let path = dir.join("m.toml");
    let text = "name = \"m\"\n[[run]]\nmodel = \"nin\"\n[[run]]\nmodel = \"resnet18\"\n";
    std::fs::write(&path, text).unwrap();
    let runs = dir.join("runs");
    let err = train_all(
        &path,
        &runs,
        &dir,
        &dir,
        "cpu",
        Some("resnet50"),
        &Placement::ALONE,
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("--only resnet50") && err.contains("nin, resnet18"),
        "{err}"
    );
    assert!(
        !runs.exists(),
        "nothing is written for a matrix that runs nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `zoo train` with `args`, failing: its stderr.
fn train_error(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zoo"))
        .arg("train")
        .args(args)
        .args(["--data-dir", "/nonexistent-zoo-data"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_negative_number_reaches_the_range_check_of_its_flag() {
    for (args, expected) in [
        (&["resnet18", "--ema-decay", "-0.1"][..], "--ema-decay"),
        (
            &["resnet18", "--schedule", "cosine", "--warmup-epochs", "-1"][..],
            "--warmup-epochs",
        ),
        (&["resnet18", "--lr", "-1"][..], "--lr"),
        (
            &["resnet18", "--weight-decay", "-5e-4"][..],
            "--weight-decay",
        ),
    ] {
        let err = train_error(args);
        assert!(
            err.contains(expected) && err.contains("expected") && !err.contains("unexpected"),
            "{args:?}: {err}"
        );
    }
    // An integer flag: clap names it and says why the value does not parse.
    let err = train_error(&["resnet18", "--epochs", "-1"]);
    assert!(err.contains("--epochs") && err.contains("'-1'"), "{err}");
}
