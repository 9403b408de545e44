//! zoo-vgg
