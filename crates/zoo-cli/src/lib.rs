//! zoo-cli
