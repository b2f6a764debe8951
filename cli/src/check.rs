//! `cpengine check`

use std::process::ExitCode;

use cpengine::criu::{Criu, Features, LocateError, MIN_VERSION};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct CheckReport {
    binary: String,
    version: Option<String>,
    version_number: Option<u32>,
    required: String,
    supported: bool,
    kernel_check: Option<bool>,
    features: Option<Features>,
    problem: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut report = CheckReport {
        binary: String::new(),
        version: None,
        version_number: None,
        required: format!(">= {MIN_VERSION}"),
        supported: false,
        kernel_check: None,
        features: None,
        problem: None,
    };
    match Criu::detect().await {
        Err(e) => {
            if let LocateError::TooOld { binary, found } = &e {
                report.binary = binary.display().to_string();
                report.version = Some(found.to_string());
                report.version_number = Some(found.number());
            } else if let LocateError::Version { binary, .. }
            | LocateError::Missing { path: binary } = &e
            {
                report.binary = binary.display().to_string();
            }
            report.problem = Some(e.to_string());
        }
        Ok((criu, version)) => {
            report.binary = criu.binary().display().to_string();
            report.version = Some(version.to_string());
            report.version_number = Some(version.number());
            report.supported = true;
            report.kernel_check = Some(criu.check().await.is_ok());
            match criu.features(Features::ALL).await {
                Ok(f) => report.features = Some(f),
                Err(e) => report.problem = Some(format!("FEATURE_CHECK failed: {e}")),
            }
        }
    }
    if args.json {
        crate::output::json(&report)?;
    } else {
        print_human(&report);
    }
    let ok = report.supported && report.kernel_check == Some(true) && report.features.is_some();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn print_human(r: &CheckReport) {
    let binary = if r.binary.is_empty() {
        "not found"
    } else {
        &r.binary
    };
    println!("criu binary    {binary}");
    if let Some(v) = &r.version {
        println!(
            "criu version   {v} ({}; cpengine needs {})",
            if r.supported { "supported" } else { "too old" },
            r.required
        );
    }
    if let Some(k) = r.kernel_check {
        println!(
            "kernel check   {}",
            if k {
                "ok (criu CHECK passed)"
            } else {
                "FAILED (criu CHECK)"
            }
        );
    }
    if let Some(f) = &r.features {
        println!();
        println!("{:<13}  {:<9}  needed for", "FEATURE", "AVAILABLE");
        println!(
            "{:<13}  {:<9}  incremental checkpoints (pre-dump, soft-dirty tracking)",
            "mem_track",
            yes_no(f.mem_track)
        );
        println!(
            "{:<13}  {:<9}  lazy-pages restore (userfaultfd)",
            "lazy_pages",
            yes_no(f.lazy_pages)
        );
        println!(
            "{:<13}  {:<9}  pid reuse detection across pre-dumps (pidfd store)",
            "pidfd_store",
            yes_no(f.pidfd_store)
        );
    }
    if let Some(p) = &r.problem {
        println!();
        println!("problem: {p}");
    }
}
