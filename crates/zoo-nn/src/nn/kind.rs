//! [`LayerKind`]: what a layer is, by the PyTorch class name the notebook prints.

/// A layer's kind: zoo's layers and the notebook's blocks, and [`LayerKind::Block`] for a
/// block defined outside zoo. Displayed (and summarised) as the PyTorch class name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    Conv2d,
    Linear,
    BatchNorm2d,
    ReLU,
    Dropout,
    Flatten,
    MaxPool2d,
    AvgPool2d,
    AdaptiveAvgPool2d,
    Sequential,
    /// ResNet's residual block.
    Residual,
    /// GoogLeNet's Inception block.
    Inception,
    /// DenseNet's dense block.
    DenseBlock,
    /// Another block, by the class name its summary should print.
    Block(&'static str),
}

impl LayerKind {
    /// The PyTorch class name (`Conv2d`, `Sequential`, `Residual`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Conv2d => "Conv2d",
            Self::Linear => "Linear",
            Self::BatchNorm2d => "BatchNorm2d",
            Self::ReLU => "ReLU",
            Self::Dropout => "Dropout",
            Self::Flatten => "Flatten",
            Self::MaxPool2d => "MaxPool2d",
            Self::AvgPool2d => "AvgPool2d",
            Self::AdaptiveAvgPool2d => "AdaptiveAvgPool2d",
            Self::Sequential => "Sequential",
            Self::Residual => "Residual",
            Self::Inception => "Inception",
            Self::DenseBlock => "DenseBlock",
            Self::Block(name) => name,
        }
    }
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Compares with a class name as printed (`kind == "Conv2d"`), as the notebook's tables list
/// them.
impl PartialEq<&str> for LayerKind {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}
