//! [`Dataset`]: which dataset a run trains on: the three zoo knows by name, or an image folder
//! under the data root.

use serde::{Deserialize, Serialize};

/// A dataset by name: written as its name in flags, matrices and `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Dataset {
    /// CIFAR-10: binary batches or JPEG/PNG class folders.
    Cifar10,
    /// MNIST: the four IDX files, raw or gzip.
    Mnist,
    /// Fashion-MNIST: the four IDX files, raw or gzip.
    FashionMnist,
    /// `train/` and `test/` folders of class folders of images, under the data root.
    Folder(String),
}

impl Dataset {
    /// The datasets zoo knows by name.
    pub const KNOWN: [Dataset; 3] = [Dataset::Cifar10, Dataset::Mnist, Dataset::FashionMnist];

    /// Its name: the folder it lives in under the data root.
    pub fn name(&self) -> &str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
            Self::Folder(name) => name,
        }
    }

    /// Channels of its images (image folders are read as RGB).
    pub fn channels(&self) -> usize {
        if self.is_digits() { 1 } else { 3 }
    }

    /// Greyscale digits or garments (MNIST, Fashion-MNIST): never flipped by augmentation.
    pub fn is_digits(&self) -> bool {
        matches!(self, Self::Mnist | Self::FashionMnist)
    }

    /// The dataset `name` names: a known one, else an image folder of that name, which must be
    /// one plain folder name.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "cifar10" => return Ok(Self::Cifar10),
            "mnist" => return Ok(Self::Mnist),
            "fashion-mnist" => return Ok(Self::FashionMnist),
            _ => {}
        }
        if !crate::fs::is_plain_name(name) {
            return Err(format!(
                "dataset `{name}`: expected cifar10, mnist, fashion-mnist or the name of an image \
                 folder under the data root (one folder name, no `/`)"
            ));
        }
        Ok(Self::Folder(name.to_string()))
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Dataset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Dataset {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<Dataset> for String {
    fn from(d: Dataset) -> String {
        d.name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_a_path_is_refused() {
        for d in Dataset::KNOWN {
            assert_eq!(Dataset::parse(d.name()), Ok(d.clone()));
        }
        assert_eq!(Dataset::parse("pets"), Ok(Dataset::Folder("pets".into())));
        assert_eq!(Dataset::Mnist.channels(), 1);
        assert_eq!(Dataset::Folder("pets".into()).channels(), 3);
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(Dataset::parse(bad).is_err(), "{bad}");
        }
        let toml: Dataset = serde_json::from_str("\"fashion-mnist\"").unwrap();
        assert_eq!(toml, Dataset::FashionMnist);
        assert_eq!(
            serde_json::to_string(&Dataset::Cifar10).unwrap(),
            "\"cifar10\""
        );
    }
}
