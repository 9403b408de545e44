//! `zoo convert`: a PyTorch state dict of a registry model to a zoo checkpoint, or back.

use anyhow::Result;
use zoo_cli::convert::{ImportOptions, export, import_with, parse_classes, parse_floats};

use crate::cli::ConvertArgs;

/// Imports (or with `--to-pytorch` exports) the weights the flags name.
pub fn run(args: &ConvertArgs) -> Result<()> {
    if args.to_pytorch {
        anyhow::ensure!(
            args.input_size.is_none()
                && args.mean.is_none()
                && args.std.is_none()
                && args.classes.is_none(),
            "--input-size, --mean, --std and --classes describe an import; --to-pytorch \
             exports the checkpoint's weights as they are"
        );
        export(&args.input, &args.output)?;
    } else {
        let options = ImportOptions {
            input_size: args.input_size,
            mean: args
                .mean
                .as_deref()
                .map(|m| parse_floats(m, "--mean"))
                .transpose()?,
            std: args
                .std
                .as_deref()
                .map(|s| parse_floats(s, "--std"))
                .transpose()?,
            classes: args.classes.as_deref().map(parse_classes),
        };
        import_with(&args.model, &args.input, &args.output, &options)?;
    }
    println!("wrote {}", args.output.display());
    Ok(())
}
