//! Parses tracefs `events/<category>/<name>/format` files, so that the classic tracepoint
//! programs read fields at this kernel's offsets instead of hard-coded ones.

use std::path::{Path, PathBuf};

use bufscope_abi::TracepointOffsets;

/// Why a lock event's format file cannot give the offsets the classic tracepoint programs need.
#[derive(Debug, thiserror::Error)]
pub enum TracepointFormatError {
    #[error("{}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no field `{name}`", path.display())]
    NoField { path: PathBuf, name: &'static str },
    #[error("{}: field `{name}` is {size} bytes, expected {expected}", path.display())]
    FieldSize {
        path: PathBuf,
        name: &'static str,
        size: u32,
        expected: u32,
    },
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a format file.
pub fn parse_fields(format: &str) -> Vec<Field> {
    format
        .lines()
        .filter_map(|line| {
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d.trim());
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.trim().parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.trim().parse().ok();
                }
            }
            // The name is the last word of the C declaration, without any array suffix.
            let name = decl?
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()?
                .split('[')
                .next()?
                .to_string();
            Some(Field {
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

fn field_offset(
    fields: &[Field],
    name: &'static str,
    expected: u32,
    path: &Path,
) -> Result<u32, TracepointFormatError> {
    let field =
        fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TracepointFormatError::NoField {
                path: path.to_path_buf(),
                name,
            })?;
    if field.size != expected {
        return Err(TracepointFormatError::FieldSize {
            path: path.to_path_buf(),
            name,
            size: field.size,
            expected,
        });
    }
    Ok(field.offset)
}

/// Reads the offsets of lock:contention_begin's lock_addr and flags and lock:contention_end's
/// lock_addr and ret from tracefs.
pub fn lock_contention_offsets(tracefs: &Path) -> Result<TracepointOffsets, TracepointFormatError> {
    let read = |event: &str| {
        let path = tracefs.join("events/lock").join(event).join("format");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((parse_fields(&text), path)),
            Err(source) => Err(TracepointFormatError::Read { path, source }),
        }
    };
    let (begin, begin_path) = read("contention_begin")?;
    let (end, end_path) = read("contention_end")?;
    Ok(TracepointOffsets {
        begin_lock_addr: field_offset(&begin, "lock_addr", 8, &begin_path)?,
        begin_flags: field_offset(&begin, "flags", 4, &begin_path)?,
        end_lock_addr: field_offset(&end, "lock_addr", 8, &end_path)?,
        end_ret: field_offset(&end, "ret", 4, &end_path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "name: contention_begin
ID: 388
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * lock_addr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned int flags;\toffset:16;\tsize:4;\tsigned:0;

print fmt: \"%p (flags=%s)\", REC->lock_addr, ...
";

    #[test]
    fn parses_names_offsets_and_sizes() {
        let fields = parse_fields(BEGIN);
        let names: Vec<_> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid",
                "lock_addr",
                "flags"
            ]
        );
        assert_eq!(
            fields[4],
            Field {
                name: "lock_addr".into(),
                offset: 8,
                size: 8
            }
        );
        assert_eq!(fields[5].offset, 16);
    }

    #[test]
    fn reads_offsets_from_a_tracefs_tree_and_checks_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("events/lock");
        std::fs::create_dir_all(lock.join("contention_begin")).unwrap();
        std::fs::create_dir_all(lock.join("contention_end")).unwrap();
        // A kernel with a different layout: the offsets must follow the file.
        std::fs::write(
            lock.join("contention_begin/format"),
            BEGIN.replace("offset:8;", "offset:24;"),
        )
        .unwrap();
        std::fs::write(
            lock.join("contention_end/format"),
            "format:\n\tfield:void * lock_addr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:int ret;\toffset:16;\tsize:4;\tsigned:1;\n",
        )
        .unwrap();
        let offsets = lock_contention_offsets(dir.path()).unwrap();
        assert_eq!(offsets.begin_lock_addr, 24);
        assert_eq!(offsets.begin_flags, 16);
        assert_eq!(offsets.end_ret, 16);

        std::fs::write(
            lock.join("contention_end/format"),
            "\tfield:void * lock_addr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n",
        )
        .unwrap();
        let err = lock_contention_offsets(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`ret` is 8 bytes, expected 4"), "{err}");

        std::fs::remove_file(lock.join("contention_end/format")).unwrap();
        let err = lock_contention_offsets(dir.path()).unwrap_err();
        let TracepointFormatError::Read { path, source } = &err else {
            panic!("expected a read error, got {err:?}");
        };
        assert_eq!(path, &lock.join("contention_end/format"));
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    }
}
