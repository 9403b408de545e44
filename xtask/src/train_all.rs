//! `cargo xtask train-all`: a training matrix run (skipping complete runs, resuming unfinished
//! ones), its report, and with `--update-docs` that report spliced into docs/results.md.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::data::{prepare_data, shared_data};
use crate::machine::cpu_model;
use crate::project_root;

/// Runs the matrix `matrix` (a preset name or a file; default `reference` with CUDA, `cpu`
/// without) on `device`, only `only`'s entries when given.
pub fn run(
    matrix: Option<String>,
    data_dir: Option<PathBuf>,
    device: String,
    only: Option<String>,
    update_docs: bool,
) -> Result<()> {
    let preset = matrix.unwrap_or_else(|| {
        if candle_core::utils::cuda_is_available() && device != "cpu" {
            "reference".into()
        } else {
            "cpu".into()
        }
    });
    let path = matrix_path(&preset, &project_root().join("xtask/matrices"))?;
    let data = zoo_core::data::resolve::data_root(data_dir.as_deref());
    // Under a launcher (`--nproc-per-node`, mpirun, torchrun): this process is one rank.
    let launch = zoo_dist::Launch::from_env()?;
    let rank_device = zoo_cli::device::parse_device_for_rank(&device, launch.local_rank())?;
    // A fresh clone beside ../shared/data: fill the data root first (idempotent; rank 0).
    if shared_data().is_dir() && launch.rank() == 0 {
        prepare_data(&shared_data(), &data)?;
    }
    let collective = zoo_dist::connect(&launch, &rank_device)?;
    if let Some(c) = &collective {
        c.barrier()
            .context("waiting for rank 0 to prepare the data")?;
    }
    let placement =
        zoo_cli::training::Placement::joined(collective, None, launch.local_rank(), rank_device);
    let Some(report) = zoo_cli::matrix::train_all(
        &path,
        &project_root().join("runs"),
        &data,
        &project_root().join("samples"),
        &device,
        only.as_deref(),
        &placement,
    )?
    else {
        return Ok(()); // a rank other than 0: rank 0 reports
    };
    println!("report: {}", report.display());
    if update_docs {
        update_results_doc(&report, &preset)?;
    }
    Ok(())
}

/// The file `--matrix` names: an existing file as given, else a preset of `presets` by name; a
/// missing one is named as given, with the presets there are.
pub fn matrix_path(matrix: &str, presets: &Path) -> Result<PathBuf> {
    let as_given = Path::new(matrix);
    if as_given.is_file() {
        return Ok(as_given.to_path_buf());
    }
    let looks_like_a_file = matrix.ends_with(".toml") || matrix.contains(['/', '\\']);
    let preset = presets.join(format!("{matrix}.toml"));
    if !looks_like_a_file && preset.is_file() {
        return Ok(preset);
    }
    let mut names: Vec<String> = std::fs::read_dir(presets)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".toml").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    anyhow::bail!(
        "--matrix {matrix}: no such file, and no preset of that name (presets: {})",
        names.join(", ")
    )
}

/// docs/results.md: the latest report of `preset` with the date, machine and command, in that
/// matrix's marked section (appended when the page has none); the rest of the page is kept.
fn update_results_doc(report: &Path, preset: &str) -> Result<()> {
    let table =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let stamp = results_stamp(preset);
    let body = copy_report_figures(report, &table, preset)?;
    let body = match body.split_once('\n') {
        Some((heading, rest)) => format!("{heading}\n\n{stamp}\n{rest}"),
        None => format!("{body}\n\n{stamp}\n"),
    };
    let path = project_root().join("docs/results.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Results\n".into());
    let doc = splice_matrix_section(&existing, preset, &body);
    zoo_core::fs::write_atomic(&path, doc.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("updated {}", path.display());
    Ok(())
}

/// The trimmed standard output of `command`, or empty when it cannot run.
fn command_output(command: &mut std::process::Command) -> String {
    command
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The line under a matrix's heading: when, on what machine, at which commit, and how to
/// regenerate it.
fn results_stamp(preset: &str) -> String {
    let date = command_output(
        std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d"),
    );
    let cpu = cpu_model();
    let commit = command_output(
        std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(project_root()),
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "Latest `cargo xtask train-all --matrix {preset}` on {date}, {cpu}, {cores} cores, CPU, \
         zoo at commit {commit}. Regenerate with `cargo xtask train-all --matrix {preset} --update-docs`."
    )
}

/// The report `table` as a section (its heading one level down), its figures and each run's
/// curves copied to `docs/results/<matrix>/` and its links pointed there (runs/ is not
/// committed).
fn copy_report_figures(report: &Path, table: &str, preset: &str) -> Result<String> {
    let report_dir = report.parent().context("report folder")?;
    let curves_dir = project_root().join("docs/results").join(preset);
    std::fs::create_dir_all(&curves_dir)?;
    let mut body = table.replacen("# Training matrix", "## Training matrix", 1);
    for figure in ["accuracy_vs_time.png", "accuracy_vs_epoch.png"] {
        let from = report_dir.join(figure);
        if from.is_file() {
            zoo_core::fs::copy_atomic(&from, &curves_dir.join(figure))?;
            body = body.replace(
                &format!("]({figure})"),
                &format!("](results/{preset}/{figure})"),
            );
        }
    }
    for entry in std::fs::read_dir(report_dir)? {
        let run = entry?.path();
        let curves = run.join("curves.png");
        if let (true, Some(name)) = (
            curves.is_file(),
            run.file_name().map(|n| n.to_string_lossy().into_owned()),
        ) {
            zoo_core::fs::copy_atomic(&curves, &curves_dir.join(format!("{name}.png")))?;
            body = body.replace(
                &format!("]({name}/curves.png)"),
                &format!("](results/{preset}/{name}.png)"),
            );
        }
    }
    Ok(body)
}

/// `existing` with `preset`'s section between its markers replaced by `body`, or appended.
/// The generated part sits between markers, so that the rest of the page (other matrices,
/// the hand-written reading of the results) survives an update.
fn splice_matrix_section(existing: &str, preset: &str, body: &str) -> String {
    let begin = format!("<!-- matrix {preset}: generated by xtask train-all --update-docs -->");
    let end = format!("<!-- end of matrix {preset} -->");
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    match (existing.find(&begin), existing.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &existing[..a], &existing[b + end.len()..])
        }
        _ => format!("{}\n\n{section}\n", existing.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_is_a_file_or_a_preset_and_a_missing_one_is_named_as_given() {
        let presets = project_root().join("xtask/matrices");
        assert_eq!(
            matrix_path("cpu", &presets).unwrap(),
            presets.join("cpu.toml")
        );
        let file = presets.join("smoke.toml");
        let given = file.to_string_lossy().into_owned();
        assert_eq!(matrix_path(&given, &presets).unwrap(), file);
        for missing in ["missing.toml", "dir/missing", "nope"] {
            let err = matrix_path(missing, &presets).unwrap_err().to_string();
            assert!(
                err.contains(&format!("--matrix {missing}:"))
                    && !err.contains(".toml.toml")
                    && err.contains("cpu, cpu-notebook, reference, smoke"),
                "{err}"
            );
        }
    }
}
