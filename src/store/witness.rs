//! A witness's own state: the last checkpoint note it cosigned, in one file replaced atomically
//! (write a temporary file, fdatasync, rename over, fsync the directory), so after a crash the
//! witness holds either the old state or the new one, never less than what it last answered.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The state file of a witness data dir.
pub struct WitnessFile {
    path: PathBuf,
    dir: PathBuf,
}

impl WitnessFile {
    /// Opens (creating) the witness data dir `dir`.
    pub fn open(dir: &Path) -> std::io::Result<WitnessFile> {
        std::fs::create_dir_all(dir)?;
        Ok(WitnessFile {
            path: dir.join("cosigned.note"),
            dir: dir.to_path_buf(),
        })
    }

    /// The last note saved, if any.
    pub fn load(&self) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the saved note with `note`, durably, before returning.
    pub fn save(&self, note: &str) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(note.as_bytes())?;
        f.sync_data()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_replace_and_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let w = WitnessFile::open(d.path()).unwrap();
        assert_eq!(w.load().unwrap(), None);
        w.save("a\n").unwrap();
        w.save("b\n").unwrap();
        assert_eq!(
            WitnessFile::open(d.path()).unwrap().load().unwrap(),
            Some("b\n".into())
        );
        assert!(!d.path().join("cosigned.tmp").exists());
    }
}
