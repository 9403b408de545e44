//! zoo-densenet
