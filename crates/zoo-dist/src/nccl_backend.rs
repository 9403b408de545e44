//! The NCCL backend (feature `nccl`): cudarc's NCCL communicator on each rank's GPU, its unique
//! id shared at `MASTER_ADDR:MASTER_PORT` ([`crate::rendezvous`]). Started by `torchrun
//! --nproc-per-node N --no-python zoo train ...` or `zoo train --nproc-per-node N`.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use zoo_core::distributed::{Collective, check_dtype};

use crate::launch_env::TorchrunEnv;
use crate::rendezvous;

/// The communicator, shared by the custom ops that run the collectives.
struct SharedComm(Comm);
// SAFETY: the communicator is used from the one thread that trains (collectives are called in
// order by the trainer); NCCL allows a communicator to move between threads.
unsafe impl Send for SharedComm {}
unsafe impl Sync for SharedComm {}

/// One rank's NCCL communicator.
pub struct NcclCollective {
    comm: Arc<SharedComm>,
    rank: usize,
    world_size: usize,
    device: Device,
}

impl NcclCollective {
    /// Joins the torchrun launch `env` on `device` (`cuda:LOCAL_RANK`): rank 0 makes NCCL's
    /// unique id and serves it, the others fetch it, and all initialise the communicator.
    pub fn from_torchrun(env: &TorchrunEnv, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            candle_core::bail!("NCCL needs a CUDA device, got {device:?}")
        };
        let agent_store = std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v == "True");
        let port = rendezvous::id_port(env, agent_store)?;
        let timeout = rendezvous::timeout();
        let id = if env.rank == 0 {
            let id = Id::new().map_err(|e| nccl_error("making the unique id", e))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            rendezvous::serve(port, &bytes, env.world_size - 1, timeout)?;
            id
        } else {
            let bytes = rendezvous::fetch(&env.master_addr, port, timeout)?;
            let mut internal = [0 as std::ffi::c_char; 128];
            if bytes.len() != internal.len() {
                candle_core::bail!(
                    "rendezvous: rank 0 sent {} bytes, an NCCL unique id has 128",
                    bytes.len()
                )
            }
            for (d, b) in internal.iter_mut().zip(bytes) {
                *d = b as std::ffi::c_char;
            }
            Id::uninit(internal)
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), env.rank, env.world_size, id)
            .map_err(|e| nccl_error("initialising the communicator", e))?;
        Ok(Self {
            comm: Arc::new(SharedComm(comm)),
            rank: env.rank,
            world_size: env.world_size,
            device: device.clone(),
        })
    }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::msg(format!("NCCL: {what}: {e:?}"))
}

/// Which collective a custom op runs.
#[derive(Clone, Copy)]
enum Op {
    AllReduceSum,
    Broadcast { root: usize },
}

struct NcclOp {
    comm: Arc<SharedComm>,
    op: Op,
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        match self.op {
            Op::AllReduceSum => "nccl-all-reduce",
            Op::Broadcast { .. } => "nccl-broadcast",
        }
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "{}: the tensor is on the CPU; NCCL takes CUDA tensors",
            self.name()
        )
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous tensor", self.name())
        };
        let out = match s.dtype() {
            DType::F64 => self.collective::<f64>(s, start..end)?,
            _ => self.collective::<f32>(s, start..end)?,
        };
        Ok((out, l.shape().clone()))
    }
}

impl NcclOp {
    /// The collective on elements `range` of `s`, into a new buffer.
    fn collective<T>(&self, s: &CudaStorage, range: std::ops::Range<usize>) -> Result<CudaStorage>
    where
        T: CudaDType + NcclType + DeviceRepr + ValidAsZeroBits,
    {
        let src = s.as_cuda_slice::<T>()?.slice(range.clone());
        let mut dst = s.device.alloc_zeros::<T>(range.len())?;
        let comm = &self.comm.0;
        match self.op {
            Op::AllReduceSum => comm.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Op::Broadcast { root } => comm.broadcast(Some(&src), &mut dst, root as i32),
        }
        .map_err(|e| nccl_error(self.name(), e))?;
        Ok(CudaStorage::wrap_cuda_slice(dst, s.device.clone()))
    }
}

impl NcclCollective {
    fn run(&self, t: &Tensor, op: Op) -> Result<Tensor> {
        check_dtype("NCCL collective", t)?;
        t.contiguous()?.apply_op1_no_bwd(&NcclOp {
            comm: self.comm.clone(),
            op,
        })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Op::AllReduceSum)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world_size {
            candle_core::bail!(
                "broadcast (NCCL): root {root} in a world of {}",
                self.world_size
            )
        }
        self.run(t, Op::Broadcast { root })
    }

    fn barrier(&self) -> Result<()> {
        // An all-reduce of one value, waited for: no rank passes before all have come.
        let one = Tensor::ones(1, candle_core::DType::F32, &self.device)?;
        self.all_reduce_sum(&one)?;
        self.device.synchronize()
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }
}
