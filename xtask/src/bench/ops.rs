//! `bench ops`: zoo's CPU kernels against candle's compositions (BatchNorm, max pooling) and
//! the convolutions of the `cpu` preset against PyTorch's.

use anyhow::{Context, Result};

use zoo_core::table::{Align, Table};

use super::median_ms;
use crate::project_root;

pub fn run(
    steps: usize,
    torch: Option<&str>,
    only: Option<&str>,
    cases: Option<&str>,
) -> Result<()> {
    if only.is_some() || cases.is_some() {
        let cases = match cases {
            Some(list) => list
                .split(',')
                .map(parse_conv_case)
                .collect::<Result<Vec<_>>>()?,
            None => CONV_CASES.to_vec(),
        };
        return bench_conv(steps, torch, only, &cases);
    }
    let (bn_zoo, bn_candle) = time_batch_norm(steps)?;
    let (pool_zoo, pool_ref) = time_max_pool(steps)?;
    let mut table = Table::new(&[
        ("op (forward + backward)", Align::Left),
        ("zoo kernel ms", Align::Right),
        ("candle composition ms", Align::Right),
        ("speed-up", Align::Right),
    ]);
    for (op, zoo, candle) in [
        ("BatchNorm2d train, 32x64x24x24", bn_zoo, bn_candle),
        ("MaxPool2d(3, 2, 1), 32x64x48x48", pool_zoo, pool_ref),
    ] {
        table.row([
            op.to_string(),
            format!("{zoo:.2}"),
            format!("{candle:.2}"),
            format!("{:.1}x", candle / zoo),
        ]);
    }
    print!("{}", table.markdown());
    bench_conv(steps, torch, None, &CONV_CASES)
}

/// Milliseconds of a training-mode BatchNorm2d forward + backward on 32x64x24x24: zoo's fused
/// kernel and candle's composition.
fn time_batch_norm(steps: usize) -> Result<(f64, f64)> {
    use candle_core::{DType, Device, Var};
    use candle_nn::ModuleT;
    let time = |f: &mut dyn FnMut() -> Result<()>| median_ms(steps, f);
    let x = Var::from_tensor(&zoo_core::testing::test_input(&[32, 64, 24, 24], 1)?)?;
    let store = zoo_core::init::ParamStore::new(
        0,
        zoo_core::init::InitScheme::XavierUniform,
        DType::F32,
        &Device::Cpu,
    );
    let fused = zoo_core::nn::BatchNorm2d::new(64, store.var_builder(), &Default::default())?;
    let varmap = candle_nn::VarMap::new();
    let reference = candle_nn::batch_norm(
        64,
        candle_nn::BatchNormConfig::default(),
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let bn_zoo = time(&mut || {
        fused
            .forward_t(x.as_tensor(), true)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    let bn_candle = time(&mut || {
        reference
            .forward_t(x.as_tensor(), true)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    Ok((bn_zoo, bn_candle))
}

/// Milliseconds of a MaxPool2d(3, 2, 1) forward + backward on 32x64x48x48: zoo's kernel and
/// the composed reference.
fn time_max_pool(steps: usize) -> Result<(f64, f64)> {
    use candle_core::Var;
    let time = |f: &mut dyn FnMut() -> Result<()>| median_ms(steps, f);
    let p = zoo_kernels::pool::Pool2dParams::new(3, 2, 1);
    let xp = Var::from_tensor(&zoo_core::testing::test_input(&[32, 64, 48, 48], 2)?)?;
    let pool_zoo = time(&mut || {
        zoo_kernels::pool::max_pool2d(xp.as_tensor(), p)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    let pool_ref = time(&mut || {
        zoo_kernels::pool::max_pool2d_composed(xp.as_tensor(), p)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    Ok((pool_zoo, pool_ref))
}

/// A convolution case of `bench ops`: input shape, output channels, kernel, stride, padding.
type ConvCase = ([usize; 4], usize, usize, usize, usize);

/// The convolutions `bench ops` times at the `cpu` preset's sizes, batch 32: the 3x3s of
/// ResNet-18 (8x8 down to 1x1 maps), those of VGG-11 (16x16 down to 2x2), and every
/// convolution of NiN (11x11 stride 4, 5x5, 3x3 and the 1x1s).
const CONV_CASES: [ConvCase; 17] = [
    ([32, 64, 8, 8], 64, 3, 1, 1),
    ([32, 128, 4, 4], 128, 3, 1, 1),
    ([32, 256, 2, 2], 256, 3, 1, 1),
    ([32, 512, 1, 1], 512, 3, 1, 1),
    ([32, 64, 16, 16], 128, 3, 1, 1),
    ([32, 128, 8, 8], 256, 3, 1, 1),
    ([32, 256, 8, 8], 256, 3, 1, 1),
    ([32, 256, 4, 4], 512, 3, 1, 1),
    ([32, 512, 4, 4], 512, 3, 1, 1),
    ([32, 512, 2, 2], 512, 3, 1, 1),
    ([32, 3, 67, 67], 96, 11, 4, 0),
    ([32, 96, 15, 15], 96, 1, 1, 0),
    ([32, 96, 7, 7], 256, 5, 1, 2),
    ([32, 256, 7, 7], 256, 1, 1, 0),
    ([32, 256, 3, 3], 384, 3, 1, 1),
    ([32, 384, 3, 3], 384, 1, 1, 0),
    ([32, 64, 32, 32], 128, 3, 1, 1),
];

/// A `--cases` entry, `NxCxHxW:OUT:K:S:P`.
fn parse_conv_case(text: &str) -> Result<ConvCase> {
    let bad = || {
        anyhow::anyhow!(
            "--cases: `{text}` is not NxCxHxW:OUT:K:S:P (e.g. 1x64x56x56:64:3:1:1), every number \
             a positive integer but padding, which may be 0"
        )
    };
    let number = |v: &str| v.trim().parse::<usize>().map_err(|_| bad());
    let parts: Vec<&str> = text.split(':').collect();
    let [input, out, k, stride, padding] = parts[..] else {
        return Err(bad());
    };
    let dims = input.split('x').map(number).collect::<Result<Vec<_>>>()?;
    let input: [usize; 4] = dims.try_into().map_err(|_| bad())?;
    let case = (
        input,
        number(out)?,
        number(k)?,
        number(stride)?,
        number(padding)?,
    );
    let (input, out, k, stride, _) = case;
    if input.contains(&0) || out == 0 || k == 0 || stride == 0 {
        return Err(bad());
    }
    anyhow::ensure!(
        k <= input[2] + 2 * case.4 && k <= input[3] + 2 * case.4,
        "--cases: `{text}`: the {k}x{k} kernel is larger than the padded {}x{} input",
        input[2],
        input[3]
    );
    Ok(case)
}

/// A case as `bench_conv_torch.py` takes it: `NxCxHxW:OUT:K:S:P`.
fn conv_case_name((x, out, k, stride, padding): &ConvCase) -> String {
    format!(
        "{}x{}x{}x{}:{out}:{k}:{stride}:{padding}",
        x[0], x[1], x[2], x[3]
    )
}

/// One timed convolution: its case name, forward ms and forward + backward ms.
type ConvTiming = (String, f64, f64);

/// The convolutions `cases` (those `only` names), with bias: zoo's kernel, forward and
/// forward + backward, beside PyTorch's (oneDNN) when a Python with torch is given.
fn bench_conv(
    steps: usize,
    torch: Option<&str>,
    only: Option<&str>,
    cases: &[ConvCase],
) -> Result<()> {
    let chosen = chosen_conv_cases(cases, only)?;
    let mut zoo_rows = Vec::new();
    for &(i, case) in &chosen {
        zoo_rows.push(time_zoo_conv(steps, i, case)?);
    }
    let torch_rows: Vec<ConvTiming> = match torch {
        None => Vec::new(),
        Some(python) => torch_conv_timings(python, steps, &chosen)?,
    };
    let mut table = Table::new(&[
        ("convolution (input:out:kernel:stride:padding)", Align::Left),
        ("zoo forward ms", Align::Right),
        ("PyTorch forward ms", Align::Right),
        ("zoo fwd+bwd ms", Align::Right),
        ("PyTorch fwd+bwd ms", Align::Right),
        ("fwd+bwd speed ratio", Align::Right),
    ]);
    for (case, forward, both) in &zoo_rows {
        let t = torch_rows.iter().find(|t| &t.0 == case);
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        table.row([
            case.clone(),
            format!("{forward:.2}"),
            fmt(t.map(|t| t.1)),
            format!("{both:.2}"),
            fmt(t.map(|t| t.2)),
            fmt(t.map(|t| t.2 / both)),
        ]);
    }
    println!("\n{}", table.markdown());
    Ok(())
}

/// The cases (with their index, the input's seed) whose name contains a part of `only`, or
/// all; an error when none does.
fn chosen_conv_cases<'a>(
    cases: &'a [ConvCase],
    only: Option<&str>,
) -> Result<Vec<(usize, &'a ConvCase)>> {
    let chosen: Vec<(usize, &ConvCase)> = cases
        .iter()
        .enumerate()
        .filter(|(_, case)| {
            only.is_none_or(|o| o.split(',').any(|part| conv_case_name(case).contains(part)))
        })
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "bench ops: no convolution case matches --only"
    );
    Ok(chosen)
}

/// Zoo's kernel on one case (input seeded with `seed`): forward ms and forward + backward ms.
fn time_zoo_conv(steps: usize, seed: usize, case: &ConvCase) -> Result<ConvTiming> {
    use candle_core::{DType, Device, Var};
    let time = |f: &mut dyn FnMut() -> Result<()>| median_ms(steps, f);
    let (shape, out, k, stride, padding) = *case;
    let c = shape[1];
    let x = Var::from_tensor(&zoo_core::testing::test_input(&shape, seed as u64)?)?;
    let w = Var::from_tensor(&zoo_core::testing::test_input(&[out, c, k, k], 7)?)?;
    let b = Var::from_tensor(&candle_core::Tensor::zeros(out, DType::F32, &Device::Cpu)?)?;
    let geometry = zoo_kernels::conv::ConvGeometry { stride, padding };
    let run =
        || zoo_kernels::conv::conv2d(x.as_tensor(), w.as_tensor(), b.as_tensor(), geometry, false);
    let forward = time(&mut || {
        run()?;
        Ok(())
    })?;
    let both = time(&mut || {
        run()?.sum_all()?.backward()?;
        Ok(())
    })?;
    Ok((conv_case_name(case), forward, both))
}

/// PyTorch's timings of the chosen cases (scripts/bench_conv_torch.py), from its `RESULT`
/// lines.
fn torch_conv_timings(
    python: &str,
    steps: usize,
    chosen: &[(usize, &ConvCase)],
) -> Result<Vec<ConvTiming>> {
    let cases: Vec<String> = chosen
        .iter()
        .map(|(_, case)| conv_case_name(case))
        .collect();
    let out = std::process::Command::new(python)
        .arg(project_root().join("scripts/bench_conv_torch.py"))
        .args(["--steps", &steps.to_string(), "--cases", &cases.join(",")])
        .output()
        .with_context(|| format!("running {python} scripts/bench_conv_torch.py"))?;
    anyhow::ensure!(
        out.status.success(),
        "bench_conv_torch.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 || f[0] != "RESULT" {
            continue;
        }
        let parse = |v: &str| {
            v.parse::<f64>()
                .with_context(|| format!("bench_conv_torch.py: bad number in {line:?}"))
        };
        rows.push((f[2].to_string(), parse(f[3])?, parse(f[4])?));
    }
    Ok(rows)
}
