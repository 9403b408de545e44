//! zoo-nin
