//! zoo-resnet
