//! torchvision parity fixtures (`tests/fixtures/tv_*.json`, written by scripts/tv_parity.py):
//! each model's recorded logits, running sums and state-dict names, and the check of a store's
//! names against them. Behind the `fixtures` feature: the model crates' tests use it.

use candle_core::Result;
use serde_json::Value;

use crate::init::ParamStore;
use crate::testing::{check_state_dict, state_dict_digest};

/// One fixture file: the input size and every model's record.
pub struct TvFixture {
    root: Value,
}

/// One model's record in a [`TvFixture`].
pub struct TvRecord<'a> {
    name: &'a str,
    value: &'a Value,
}

impl TvFixture {
    /// Reads the fixture at `path`; a missing or malformed file is an error naming it.
    pub fn read(path: &str) -> Result<Self> {
        let failed = |e: &dyn std::fmt::Display| candle_core::Error::Msg(format!("{path}: {e}"));
        let text = std::fs::read_to_string(path).map_err(|e| failed(&e))?;
        let root = serde_json::from_str(&text).map_err(|e| failed(&e))?;
        Ok(Self { root })
    }

    /// The side of the square formula input the records were made at.
    pub fn size(&self) -> usize {
        self.root["size"].as_u64().expect("the fixture's `size`") as usize
    }

    /// The record of torchvision's model `name` (`resnet18`, `vgg11_bn`, ...).
    pub fn model<'a>(&'a self, name: &'a str) -> TvRecord<'a> {
        let value = &self.root["models"][name];
        assert!(!value.is_null(), "the fixture has no model `{name}`");
        TvRecord { name, value }
    }
}

impl TvRecord<'_> {
    /// Logits of the evaluation-mode forward pass.
    pub fn eval_logits(&self) -> Vec<f32> {
        self.floats("eval_logits")
    }

    /// Logits of the training-mode forward pass.
    pub fn train_logits(&self) -> Vec<f32> {
        self.floats("train_logits")
    }

    /// The sum of each BatchNorm running statistic after the training-mode pass, by name
    /// (`None` where the fixture leaves them out).
    pub fn running_sums(&self) -> Option<Vec<(String, f64)>> {
        let sums = self.value["running_sums"].as_object()?;
        let number = |v: &Value| v.as_f64().expect("a running sum");
        Some(sums.iter().map(|(k, v)| (k.clone(), number(v))).collect())
    }

    /// `store`'s names and shapes against torchvision's state dict: its tree where the record
    /// lists it, and its digest (tensor count and FNV-1a of the sorted `name:shape` lines).
    pub fn check_names(&self, store: &ParamStore) -> Result<()> {
        let tree = &self.value["state_dict"];
        if !tree.is_null() {
            let mut names = Vec::new();
            flatten("", tree, &mut names);
            check_state_dict(store, &names)?;
        }
        let digest = &self.value["state_dict_digest"];
        let (count, fnv) = state_dict_digest(store);
        let name = self.name;
        assert_eq!(Some(count as u64), digest["tensors"].as_u64(), "{name}");
        assert_eq!(
            Some(format!("{fnv:016x}").as_str()),
            digest["fnv1a"].as_str(),
            "{name}"
        );
        Ok(())
    }

    fn floats(&self, key: &str) -> Vec<f32> {
        let values = self.value[key].as_array();
        let values = values.unwrap_or_else(|| panic!("{}: no `{key}` list", self.name));
        values
            .iter()
            .map(|x| x.as_f64().expect("a number") as f32)
            .collect()
    }
}

/// The fixture's tree of module paths as (dotted name, shape) pairs.
fn flatten(prefix: &str, tree: &Value, out: &mut Vec<(String, Vec<usize>)>) {
    for (key, node) in tree.as_object().expect("a module") {
        let name = format!("{prefix}{key}");
        match node.as_array() {
            Some(dims) => {
                let dims = dims.iter().map(|d| d.as_u64().expect("a length") as usize);
                out.push((name, dims.collect()))
            }
            None => flatten(&format!("{name}."), node, out),
        }
    }
}
