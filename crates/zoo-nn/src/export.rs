//! A network's evaluation-mode graph in ONNX's operator vocabulary (opset 17), built by each
//! layer's `Layer::export` (in `nn`), with no protobuf dependency here: `zoo export` writes
//! it as an `.onnx` file. Weights keep their zoo names; BatchNorm exports with its running
//! statistics and Dropout as nothing, as evaluation computes them.

use candle_core::{DType, Device, Result, Tensor};

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// One operator application.
#[derive(Debug, Clone)]
pub struct Node {
    /// ONNX operator (`Conv`, `BatchNormalization`, ...).
    pub op_type: &'static str,
    /// Unique node name.
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<(&'static str, Attribute)>,
}

/// A value flowing through the graph: its name and shape (batch first; the file leaves the
/// batch symbolic).
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The graph under construction: nodes in execution order and the initialisers (weights
/// under their zoo names, and constants), as contiguous f32 CPU tensors.
#[derive(Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub initializers: Vec<(String, Tensor)>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds weight `tensor` under its zoo `name` (f32, on the CPU) and returns the name.
    pub fn weight(&mut self, name: &str, tensor: &Tensor) -> Result<String> {
        if self.initializers.iter().any(|(n, _)| n == name) {
            return Ok(name.to_string());
        }
        let t = tensor
            .detach()
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        self.initializers.push((name.to_string(), t));
        Ok(name.to_string())
    }

    /// Adds a constant (not a weight of the network) under a fresh name from `hint`.
    pub fn constant(&mut self, hint: &str, tensor: &Tensor) -> Result<String> {
        let name = format!("const.{}.{hint}", self.initializers.len());
        self.weight(&name, tensor)
    }

    /// Adds `op_type` over `inputs` with `attributes`; its one output has `shape` and a name
    /// made from `hint` (the layer's name).
    pub fn node(
        &mut self,
        op_type: &'static str,
        hint: &str,
        inputs: Vec<String>,
        attributes: Vec<(&'static str, Attribute)>,
        shape: Vec<usize>,
    ) -> Value {
        let name = format!(
            "{}.{}",
            self.nodes.len(),
            if hint.is_empty() { op_type } else { hint }
        );
        let output = format!("{name}:{op_type}");
        self.nodes.push(Node {
            op_type,
            name,
            inputs,
            outputs: vec![output.clone()],
            attributes,
        });
        Value {
            name: output,
            shape,
        }
    }
}

impl Graph {
    /// `Relu(x)`.
    pub fn relu(&mut self, x: &Value) -> Value {
        self.node("Relu", "", vec![x.name.clone()], vec![], x.shape.clone())
    }

    /// `a + b` (same shapes: residual connections).
    pub fn add(&mut self, a: &Value, b: &Value) -> Result<Value> {
        if a.shape != b.shape {
            candle_core::bail!("export: adding {:?} and {:?}", a.shape, b.shape)
        }
        let inputs = vec![a.name.clone(), b.name.clone()];
        Ok(self.node("Add", "", inputs, vec![], a.shape.clone()))
    }

    /// The channel-wise concatenation of `parts` (Inception branches, dense layers).
    pub fn concat(&mut self, parts: &[Value]) -> Result<Value> {
        let Some(first) = parts.first() else {
            candle_core::bail!("export: concatenating nothing")
        };
        let mut shape = first.shape.clone();
        shape[1] = parts.iter().map(|p| p.shape[1]).sum();
        let inputs = parts.iter().map(|p| p.name.clone()).collect();
        let attributes = vec![("axis", Attribute::Int(1))];
        Ok(self.node("Concat", "", inputs, attributes, shape))
    }
}

/// `[a, a]`, as ONNX's per-axis attributes want a square kernel, stride or dilation.
pub fn pair(a: usize) -> Attribute {
    Attribute::Ints(vec![a as i64, a as i64])
}

/// `pads` of a symmetric padding `p` on both spatial axes (begin, begin, end, end).
pub fn pads(p: usize) -> Attribute {
    Attribute::Ints(vec![p as i64; 4])
}
