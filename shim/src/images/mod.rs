//! Image stores behind the ImageService.
//!
//! [`oci::OciImages`] serves the CRI ImageService from cpengine's OCI image store (the one
//! `cpengine image …` fills) and unpacks layers for container root file systems.

pub mod oci;
