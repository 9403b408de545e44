//! `zoo export --onnx`: a checkpoint's network as an ONNX file (opset 17): input `images`
//! (N, C, H, W, float32, already normalised, N dynamic), output `logits`, initialisers under
//! zoo's weight names, evaluation mode, and the preprocessing in `metadata_props` (model, input
//! size, mean, std, the evaluation transform and the class names, as JSON) so that a user of
//! any runtime can prepare images without zoo. The protobuf messages are `onnx-protobuf`'s.

use std::path::Path;

use anyhow::{Context, Result};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use zoo_core::Model;
use zoo_core::export::{Attribute, Graph, Node, Value};
use zoo_core::nn::Layer;
use zoo_core::train::checkpoint::CheckpointMeta;

use crate::loaded_model::load_model;

/// The opset the file declares.
pub const OPSET: i64 = 17;
/// The ONNX IR version of opset 17 (ONNX 1.12).
const IR_VERSION: i64 = 8;

/// Exports `checkpoint`'s network to `output` (written atomically).
pub fn export_onnx(checkpoint: &Path, output: &Path) -> Result<()> {
    let loaded = load_model(checkpoint, "cpu")?;
    let bytes = onnx_bytes(loaded.model.as_ref(), &loaded.meta)?;
    zoo_core::fs::write_atomic(output, &bytes)?;
    Ok(())
}

/// The ONNX file of `model`, described by `meta` (its input, transform and classes).
pub fn onnx_bytes(model: &dyn Model, meta: &CheckpointMeta) -> Result<Vec<u8>> {
    let run = &meta.run;
    let input = Value {
        name: "images".into(),
        shape: vec![1, run.input.channels, run.input.height, run.input.width],
    };
    let mut graph = Graph::new();
    let out = model
        .body()
        .export(&mut graph, &input)
        .with_context(|| format!("exporting {} to ONNX", run.model))?;
    anyhow::ensure!(
        out.name != input.name,
        "{}: the network is the identity",
        run.model
    );
    rename(&mut graph.nodes, &out.name, "logits");
    let proto = model_proto(&graph, &input, &out.shape, meta)?;
    proto
        .write_to_bytes()
        .with_context(|| format!("serialising {} as ONNX", run.model))
}

/// Renames value `from` to `to` wherever a node reads or writes it.
fn rename(nodes: &mut [Node], from: &str, to: &str) {
    for node in nodes {
        for name in node.inputs.iter_mut().chain(node.outputs.iter_mut()) {
            if name == from {
                *name = to.to_string();
            }
        }
    }
}

/// The whole ONNX model: graph, opset, producer and metadata.
fn model_proto(
    graph: &Graph,
    input: &Value,
    output_shape: &[usize],
    meta: &CheckpointMeta,
) -> Result<ModelProto> {
    let mut g = GraphProto::new();
    g.name = meta.run.model.clone();
    g.node = graph.nodes.iter().map(node_proto).collect();
    g.initializer = graph
        .initializers
        .iter()
        .map(|(name, t)| tensor_proto(name, t))
        .collect::<Result<_>>()?;
    g.input = vec![value_info("images", &input.shape)];
    g.output = vec![value_info("logits", output_shape)];
    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.producer_name = "zoo".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut opset = OperatorSetIdProto::new();
    opset.version = OPSET;
    model.opset_import = vec![opset];
    model.graph = Some(g).into();
    model.metadata_props = metadata(meta)?
        .into_iter()
        .map(|(key, value)| {
            let mut entry = StringStringEntryProto::new();
            entry.key = key.into();
            entry.value = value;
            entry
        })
        .collect();
    Ok(model)
}

/// What a runtime's user needs to prepare images, as `metadata_props`.
fn metadata(meta: &CheckpointMeta) -> Result<Vec<(&'static str, String)>> {
    let run = &meta.run;
    let t = &run.eval_transform;
    Ok(vec![
        ("model", run.model.clone()),
        (
            "input_size",
            format!("{}x{}", run.input.height, run.input.width),
        ),
        ("mean", serde_json::to_string(&t.mean)?),
        ("std", serde_json::to_string(&t.std)?),
        ("eval_transform", serde_json::to_string(t)?),
        ("classes", serde_json::to_string(&run.classes)?),
    ])
}

fn node_proto(node: &Node) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = node.op_type.into();
    n.name = node.name.clone();
    n.input = node.inputs.clone();
    n.output = node.outputs.clone();
    n.attribute = node
        .attributes
        .iter()
        .map(|(name, value)| attribute_proto(name, value))
        .collect();
    n
}

fn attribute_proto(name: &str, value: &Attribute) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    match value {
        Attribute::Int(i) => {
            a.type_ = AttributeType::INT.into();
            a.i = *i;
        }
        Attribute::Ints(v) => {
            a.type_ = AttributeType::INTS.into();
            a.ints = v.clone();
        }
        Attribute::Float(f) => {
            a.type_ = AttributeType::FLOAT.into();
            a.f = *f;
        }
    }
    a
}

/// An f32 initialiser, little-endian raw data.
fn tensor_proto(name: &str, t: &candle_core::Tensor) -> Result<TensorProto> {
    let mut p = TensorProto::new();
    p.name = name.into();
    p.dims = t.dims().iter().map(|&d| d as i64).collect();
    p.data_type = DataType::FLOAT as i32;
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    p.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(p)
}

/// A float32 tensor value of `shape`, the batch axis symbolic (`batch`).
fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let mut dims = TensorShapeProto::new();
    dims.dim = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let mut dim = tensor_shape_proto::Dimension::new();
            dim.value = Some(match i {
                0 => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
                _ => tensor_shape_proto::dimension::Value::DimValue(d as i64),
            });
            dim
        })
        .collect();
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = Some(dims).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor));
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = Some(ty).into();
    info
}
