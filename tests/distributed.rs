//! Data-parallel launching through the `zoo` binary, without an engine: the convenience
//! launcher's command line, and the clear errors of a launch this build or device cannot
//! serve (torchrun on the CPU, mpirun without the `mpi` feature, malformed variables). The
//! two-process MPI run against one process is `.ci/run`'s `cargo xtask dist-check` stage.

use std::ffi::OsString;
use std::process::Command;

use zoo_cli::launcher::without_flag;

/// `zoo train nin-mnist ...` with `env` set and every launcher variable of this test process
/// removed; returns (success, stderr).
fn zoo_train(env: &[(&str, &str)], extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zoo"));
    cmd.args(["train", "nin-mnist", "--epochs", "1", "--device", "cpu"])
        .args(extra)
        .arg("--run-dir")
        .arg(std::env::temp_dir().join(format!("zoo-launch-{}", std::process::id())));
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "PMI_RANK",
        "PMI_SIZE",
        "PMIX_RANK",
        "PMIX_SIZE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("zoo runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_launcher_repeats_the_command_without_its_flag() {
    let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
    assert_eq!(
        without_flag(args(&[
            "train",
            "resnet18",
            "--nproc-per-node",
            "2",
            "--epochs",
            "1"
        ]))
        .unwrap(),
        args(&["train", "resnet18", "--epochs", "1"])
    );
    assert_eq!(
        without_flag(args(&["train", "--nproc-per-node=4", "nin"])).unwrap(),
        args(&["train", "nin"])
    );
    assert!(without_flag(args(&["train", "--nproc-per-node"])).is_err());
}

#[test]
fn launches_this_build_cannot_serve_are_refused_with_what_to_do() {
    let torchrun = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];
    let (ok, err) = zoo_train(&torchrun, &[]);
    assert!(!ok && err.contains("mpirun -np 2 zoo train"), "{err}");

    let (ok, err) = zoo_train(&[("WORLD_SIZE", "2"), ("RANK", "0")], &[]);
    assert!(!ok && err.contains("MASTER_ADDR is not"), "{err}");

    let (ok, err) = zoo_train(&[("WORLD_SIZE", "two")], &[]);
    assert!(
        !ok && err.contains("WORLD_SIZE=\"two\": expected a whole number"),
        "{err}"
    );

    if !cfg!(feature = "mpi") {
        let mpirun = [("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")];
        let (ok, err) = zoo_train(&mpirun, &[]);
        assert!(!ok && err.contains("without the `mpi` feature"), "{err}");
        let (ok, err) = zoo_train(&[], &["--nproc-per-node", "2"]);
        assert!(!ok && err.contains("without the `mpi` feature"), "{err}");
    }
    let (ok, err) = zoo_train(&[], &["--nproc-per-node", "0"]);
    assert!(
        !ok && err.contains("--nproc-per-node 0: expected at least one process"),
        "{err}"
    );
}
