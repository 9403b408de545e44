//! How this process was launched, read from its environment: alone, by `mpirun` (Open MPI's
//! `OMPI_COMM_WORLD_*`, or the PMI variables of other MPI launchers), or by `torchrun`
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`).

use candle_core::Result;

/// torchrun's environment (the `env://` rendezvous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchrunEnv {
    pub rank: usize,
    pub world_size: usize,
    /// The rank among this machine's processes: the GPU it takes.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// The launcher behind this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// One process: no launcher, or a launcher's world of one.
    Single,
    /// Started by an MPI launcher, as rank `rank` of `world_size` (`local_rank` on its
    /// machine).
    Mpi {
        rank: usize,
        world_size: usize,
        local_rank: usize,
    },
    /// Started by torchrun (or `zoo train --nproc-per-node` on GPUs).
    Torchrun(TorchrunEnv),
}

impl Launch {
    /// Reads the launch from the process's environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the launch from `get` (a variable's value, if set): an error naming the variable
    /// when one is malformed or missing beside the others.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |name: &str| -> Result<Option<usize>> {
            match get(name) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) => Ok(Some(n)),
                    Err(_) => candle_core::bail!(
                        "environment variable {name}={v:?}: expected a whole number"
                    ),
                },
            }
        };
        let launchers = [
            (
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ),
            ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
            ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),
        ];
        for (rank_var, size_var, local_var) in launchers {
            if let Some(world_size) = number(size_var)? {
                let rank = number(rank_var)?.unwrap_or(0);
                check_rank(rank_var, rank, size_var, world_size)?;
                let local_rank = number(local_var)?.unwrap_or(0);
                return Ok(Self::Mpi {
                    rank,
                    world_size,
                    local_rank,
                });
            }
        }
        let Some(world_size) = number("WORLD_SIZE")? else {
            return Ok(Self::Single);
        };
        let rank = number("RANK")?.unwrap_or(0);
        check_rank("RANK", rank, "WORLD_SIZE", world_size)?;
        if world_size == 1 {
            return Ok(Self::Single);
        }
        let local_rank = number("LOCAL_RANK")?.unwrap_or(rank);
        let Some(master_addr) = get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) else {
            candle_core::bail!(
                "WORLD_SIZE={world_size} is set but MASTER_ADDR is not: the ranks meet at \
                 MASTER_ADDR:MASTER_PORT (torchrun sets both)"
            )
        };
        let master_port = match get("MASTER_PORT") {
            None => candle_core::bail!(
                "WORLD_SIZE={world_size} is set but MASTER_PORT is not: the ranks meet at \
                 MASTER_ADDR:MASTER_PORT (torchrun sets both)"
            ),
            Some(p) => match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => candle_core::bail!(
                    "environment variable MASTER_PORT={p:?}: expected a port number, 1 to 65535"
                ),
            },
        };
        Ok(Self::Torchrun(TorchrunEnv {
            rank,
            world_size,
            local_rank,
            master_addr: master_addr.trim().to_string(),
            master_port,
        }))
    }

    /// This process's rank (0 alone).
    pub fn rank(&self) -> usize {
        match self {
            Self::Single => 0,
            Self::Mpi { rank, .. } => *rank,
            Self::Torchrun(env) => env.rank,
        }
    }

    /// This process's rank on its machine: the GPU it takes (0 alone).
    pub fn local_rank(&self) -> usize {
        match self {
            Self::Single => 0,
            Self::Mpi { local_rank, .. } => *local_rank,
            Self::Torchrun(env) => env.local_rank,
        }
    }

    /// True when this process is one of several.
    pub fn is_distributed(&self) -> bool {
        !matches!(self, Self::Single)
    }
}

fn check_rank(rank_var: &str, rank: usize, size_var: &str, world_size: usize) -> Result<()> {
    if world_size == 0 || rank >= world_size {
        candle_core::bail!(
            "{rank_var}={rank} with {size_var}={world_size}: expected 0 <= {rank_var} < {size_var}"
        )
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch> {
        Launch::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn reads_torchrun_mpirun_and_nothing() {
        assert_eq!(launch(&[]).unwrap(), Launch::Single);
        assert_eq!(
            launch(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(),
            Launch::Single
        );
        let torchrun = [
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29500"),
        ];
        assert_eq!(
            launch(&torchrun).unwrap(),
            Launch::Torchrun(TorchrunEnv {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                master_addr: "10.0.0.2".into(),
                master_port: 29500,
            })
        );
        let mpi = [
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ];
        assert_eq!(
            launch(&mpi).unwrap(),
            Launch::Mpi {
                rank: 1,
                world_size: 2,
                local_rank: 1
            }
        );
        // mpirun's variables win over a torchrun environment left in the shell.
        let both = [mpi.as_slice(), torchrun.as_slice()].concat();
        assert_eq!(launch(&both).unwrap().rank(), 1);
    }

    #[test]
    fn bad_launch_variables_are_named() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[("WORLD_SIZE", "two")],
                "WORLD_SIZE=\"two\": expected a whole number",
            ),
            (
                &[("WORLD_SIZE", "2"), ("RANK", "2")],
                "RANK=2 with WORLD_SIZE=2",
            ),
            (&[("WORLD_SIZE", "2"), ("RANK", "1")], "MASTER_ADDR is not"),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "0"),
                ],
                "MASTER_PORT=\"0\": expected a port number",
            ),
            (
                &[("OMPI_COMM_WORLD_SIZE", "0")],
                "OMPI_COMM_WORLD_RANK=0 with OMPI_COMM_WORLD_SIZE=0",
            ),
        ];
        for (vars, expected) in cases {
            let e = launch(vars).unwrap_err().to_string();
            assert!(e.contains(expected), "{vars:?}: {e}");
        }
    }
}
