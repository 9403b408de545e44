//! zoo-googlenet
