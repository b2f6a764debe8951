//! `cpengine image …`: the local image store, checkpoint images, registry push and pull.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cpengine::oci::{
    self, CheckpointImageOptions, Format, ImageRecord, ImageStore, Reference, RegistryOptions,
};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

impl Args {
    /// `build`, `ls` and `inspect` only read archives and the store and write the store: they
    /// run with least privilege (see [`cpengine::privilege`]).
    pub fn read_only(&self) -> bool {
        matches!(
            self.command,
            Cmd::Build { .. } | Cmd::List { .. } | Cmd::Inspect { .. }
        )
    }
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Import an OCI image layout directory or OCI archive tar into the store.
    Import {
        /// The layout directory or archive.
        source: PathBuf,
        /// Name the image this (default: the layout's org.opencontainers.image.ref.name).
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the images in the store.
    #[command(name = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a name from an image, or an image (by id or by its last name), and free the
    /// blobs no image needs any more.
    #[command(name = "rm")]
    Remove {
        /// A name or an id (prefix).
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Show an image: names, digests, annotations, run config, layers.
    Inspect {
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Give an image another name.
    Tag { reference: String, name: String },
    /// Build a checkpoint image (FROM scratch, the archive's members in one layer, the
    /// annotations CRI-O, containerd and Podman look for) from a checkpoint archive.
    Build {
        /// The checkpoint archive (tar, tar+gzip or tar+zstd).
        archive: PathBuf,
        /// The image's name, NAME[:TAG].
        #[arg(long)]
        tag: String,
        /// The container name to announce (default: from config.dump).
        #[arg(long)]
        container_name: Option<String>,
        /// Also export the image in this format to --output.
        #[arg(long, value_enum, requires = "output")]
        format: Option<ExportFormat>,
        /// Where to export (must not exist).
        #[arg(long, requires = "format")]
        output: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Export an image as an OCI layout directory or OCI archive.
    Export {
        reference: String,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Where to write (must not exist).
        #[arg(long)]
        output: PathBuf,
    },
    /// Push an image to a registry (OCI distribution API).
    Push {
        /// The local image (name or id).
        reference: String,
        /// Where to push it: REGISTRY/REPOSITORY[:TAG].
        registry_ref: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long)]
        json: bool,
    },
    /// Pull an image from a registry into the store.
    Pull {
        /// REGISTRY/REPOSITORY[:TAG|@DIGEST].
        registry_ref: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// An OCI image layout directory.
    OciDir,
    /// A tar archive of an OCI image layout.
    OciArchive,
}

impl From<ExportFormat> for Format {
    fn from(f: ExportFormat) -> Self {
        match f {
            ExportFormat::OciDir => Format::OciDir,
            ExportFormat::OciArchive => Format::OciArchive,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
struct RegistryArgs {
    /// Plain HTTP even if the registry is not on loopback (loopback always uses HTTP).
    #[arg(long)]
    insecure: bool,
    /// Credentials, USER:PASSWORD.
    #[arg(long, value_name = "USER:PASSWORD")]
    creds: Option<String>,
}

impl RegistryArgs {
    fn options(&self) -> anyhow::Result<RegistryOptions> {
        Ok(RegistryOptions {
            insecure: self.insecure,
            credentials: self
                .creds
                .as_deref()
                .map(RegistryOptions::parse_credentials)
                .transpose()?,
            chunk_size: 0,
        })
    }
}

/// One image as `image ls --json` and `image inspect --json` show it.
#[derive(Debug, Serialize)]
struct ImageView {
    #[serde(flatten)]
    record: ImageRecord,
    /// The container name if this is a checkpoint image.
    checkpoint: Option<String>,
}

#[derive(Debug, Serialize)]
struct InspectView {
    #[serde(flatten)]
    image: ImageView,
    repo_digests: Vec<String>,
    config: oci::RunConfig,
    layers: Vec<oci::LayerInfo>,
}

fn view(record: ImageRecord) -> ImageView {
    ImageView {
        checkpoint: oci::is_checkpoint_image(&record),
        record,
    }
}

pub async fn run(
    args: Args,
    state: &cpengine::container::state::StateRoot,
) -> anyhow::Result<ExitCode> {
    let root = state.lib.clone();
    let store = ImageStore::open(&root)
        .await
        .with_context(|| format!("opening the image store under {}", root.display()))?;
    match args.command {
        Cmd::Import { source, tag, json } => {
            let rec = store.import(&source, tag.as_deref()).await?;
            if json {
                crate::output::json(&view(rec))?;
            } else {
                println!("imported {} {}", short_id(&rec), names(&rec));
            }
        }
        Cmd::List { json } => {
            let list = store.list().await?;
            if json {
                crate::output::json(&list.into_iter().map(view).collect::<Vec<_>>())?;
            } else {
                print_list(&list);
            }
        }
        Cmd::Remove { reference, json } => {
            let out = store.remove(&reference).await?;
            if json {
                crate::output::json(&out)?;
            } else {
                for n in &out.untagged {
                    println!("untagged {n}");
                }
                if let Some(id) = &out.deleted {
                    println!("deleted {id}");
                }
                println!(
                    "freed {} in {} blobs",
                    cpengine::report::human_bytes(out.bytes_freed),
                    out.blobs_removed
                );
            }
        }
        Cmd::Inspect { reference, json } => {
            let rec = store.resolve(&reference).await?;
            let v = InspectView {
                repo_digests: rec.repo_digests(),
                config: store.config(&rec).await?,
                layers: store.layers(&rec).await?,
                image: view(rec),
            };
            if json {
                crate::output::json(&v)?;
            } else {
                print_inspect(&v);
            }
        }
        Cmd::Tag { reference, name } => {
            let rec = store.tag(&reference, &name).await?;
            println!("tagged {} {}", short_id(&rec), names(&rec));
        }
        Cmd::Build {
            archive,
            tag,
            container_name,
            format,
            output,
            json,
        } => {
            let opts = CheckpointImageOptions {
                container_name,
                ..Default::default()
            };
            let rec = oci::build_checkpoint_image(&store, &archive, &tag, &opts)
                .await
                .with_context(|| {
                    format!("building a checkpoint image from {}", archive.display())
                })?;
            if let (Some(f), Some(out)) = (format, &output) {
                oci::export(&store, &rec, f.into(), out)
                    .await
                    .with_context(|| format!("exporting to {}", out.display()))?;
            }
            if json {
                crate::output::json(&view(rec))?;
            } else {
                println!(
                    "built checkpoint image {} {} (container {})",
                    short_id(&rec),
                    names(&rec),
                    oci::is_checkpoint_image(&rec).unwrap_or_default()
                );
                if let Some(out) = output {
                    println!("exported to {}", out.display());
                }
            }
        }
        Cmd::Export {
            reference,
            format,
            output,
        } => {
            let rec = store.resolve(&reference).await?;
            oci::export(&store, &rec, format.into(), &output).await?;
            println!("exported {} to {}", short_id(&rec), output.display());
        }
        Cmd::Push {
            reference,
            registry_ref,
            registry,
            json,
        } => {
            let out = oci::push(&store, &reference, &registry_ref, &registry.options()?)
                .await
                .with_context(|| format!("pushing {reference} to {registry_ref}"))?;
            if json {
                crate::output::json(&out)?;
            } else {
                println!(
                    "pushed {} ({}): {} blobs uploaded ({}), {} already there",
                    out.reference,
                    out.manifest_digest,
                    out.blobs_uploaded,
                    cpengine::report::human_bytes(out.bytes_uploaded),
                    out.blobs_existing
                );
            }
        }
        Cmd::Pull {
            registry_ref,
            registry,
            json,
        } => {
            let out = oci::pull(&registry_ref, &store, &registry.options()?)
                .await
                .with_context(|| format!("pulling {registry_ref}"))?;
            if json {
                crate::output::json(&out)?;
            } else {
                println!(
                    "pulled {} {}: {} blobs fetched ({})",
                    out.reference,
                    short_id(&out.image),
                    out.blobs_fetched,
                    cpengine::report::human_bytes(out.bytes_fetched)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn short_id(r: &ImageRecord) -> &str {
    &r.id_hex()[..12.min(r.id_hex().len())]
}

fn names(r: &ImageRecord) -> String {
    if r.names.is_empty() {
        "<none>".into()
    } else {
        r.names.join(", ")
    }
}

fn print_list(list: &[ImageRecord]) {
    println!(
        "{:<40} {:<16} {:<12} {:<20} {:>10}  CHECKPOINT",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"
    );
    for r in list {
        let ckpt = oci::is_checkpoint_image(r).unwrap_or_else(|| "-".into());
        let rows: Vec<(String, String)> = if r.names.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            r.names
                .iter()
                .map(|n| match Reference::parse(n) {
                    Ok(p) => (
                        p.repository(),
                        p.tag()
                            .map(str::to_owned)
                            .or_else(|| p.digest().map(|d| d[..19].to_owned()))
                            .unwrap_or_default(),
                    ),
                    Err(_) => (n.clone(), String::new()),
                })
                .collect()
        };
        for (repo, tag) in rows {
            println!(
                "{:<40} {:<16} {:<12} {:<20} {:>10}  {}",
                repo,
                tag,
                short_id(r),
                r.created.as_deref().unwrap_or("-"),
                cpengine::report::human_bytes(r.size),
                ckpt
            );
        }
    }
}

fn print_inspect(v: &InspectView) {
    let r = &v.image.record;
    println!("id             {}", r.id);
    println!("names          {}", names(r));
    println!(
        "manifest       {} ({})",
        r.manifest_digest, r.manifest_media_type
    );
    println!("platform       {}/{}", r.os, r.architecture);
    println!("created        {}", r.created.as_deref().unwrap_or("-"));
    println!("size           {}", cpengine::report::human_bytes(r.size));
    if let Some(c) = &v.image.checkpoint {
        println!("checkpoint of  {c}");
    }
    if !v.config.entrypoint.is_empty() || !v.config.cmd.is_empty() {
        println!("entrypoint     {:?}", v.config.entrypoint);
        println!("cmd            {:?}", v.config.cmd);
    }
    if !v.config.env.is_empty() {
        println!("env            {}", v.config.env.join(" "));
    }
    if !r.annotations.is_empty() {
        println!("annotations");
        for (k, val) in &r.annotations {
            println!("  {k}={val}");
        }
    }
    println!("layers");
    for l in &v.layers {
        println!(
            "  {} {} {}",
            l.digest,
            cpengine::report::human_bytes(l.size),
            l.media_type
        );
    }
}
