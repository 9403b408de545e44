//! Training: optimisers (SGD with momentum / Nesterov / weight decay, AdamW), learning-rate
//! schedules, an EMA of the weights, the loss, checkpoints that resume exactly, metrics, and
//! the trainer loop.

pub mod checkpoint;
pub mod checkpoint_stream;
pub mod checkpointer;
pub mod ema;
pub mod evaluator;
pub mod finetune;
mod inplace;
pub mod loss;
pub mod metrics;
pub mod optim;
mod ranks;
pub mod readback;
pub mod recipe;
pub mod running;
pub mod schedule;
mod step;
pub mod trainer;

#[cfg(test)]
mod tests;
