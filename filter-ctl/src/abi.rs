//! The interface the embedded program was built with, read from its ELF
//! object: the layout version it embeds and every map it defines (name,
//! type, key and value sizes), checked against `filter_common::abi`.

use filter_common::abi::{self, LAYOUT_VERSION, LAYOUT_VERSION_SECTION, LAYOUT_VERSION_SYMBOL};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionIndex, SymbolKind};

/// ELF section of the program's map definitions (aya-ebpf's `#[map]`).
const MAPS_SECTION: &str = "maps";

/// One map as the object defines it (the start of a `bpf_map_def`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMap {
    pub name: String,
    /// The kernel's `bpf_map_type` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// What an object declares about its interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectAbi {
    /// The embedded `FILTER_LAYOUT_VERSION`.
    pub layout_version: u32,
    /// Every map: the definitions in the `maps` section, in the order of the
    /// symbol table, then any data section (`.data*`, `.rodata*`, `.bss*`),
    /// which the loader would create as a map too.
    pub maps: Vec<ObjectMap>,
}

#[derive(Debug, thiserror::Error)]
pub enum AbiError {
    #[error("the eBPF object is not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("the eBPF object has no `{0}` section")]
    MissingSection(&'static str),
    #[error("the eBPF object has no `{0}` symbol")]
    MissingSymbol(&'static str),
    #[error("symbol `{0}` lies outside its section")]
    OutOfBounds(String),
    #[error(
        "the eBPF object has layout version {object}, filter-common {expected}: rebuild filter-ctl"
    )]
    Version { object: u32, expected: u32 },
    #[error("map {0} is in the eBPF object but not in filter_common::abi::MAPS")]
    Unlisted(String),
    #[error("map {0} is in filter_common::abi::MAPS but not in the eBPF object")]
    Missing(&'static str),
    #[error(
        "map {name}: the eBPF object has {found} entries, filter_common::abi::MAPS says {expected}"
    )]
    Entries {
        name: String,
        found: u32,
        expected: u32,
    },
    #[error(
        "map {name}: the eBPF object has type {found_type}, key {found_key} B, value {found_value} B; \
         filter_common::abi::MAPS says type {expected_type}, key {expected_key} B, value {expected_value} B"
    )]
    Mismatch {
        name: String,
        found_type: u32,
        found_key: u32,
        found_value: u32,
        expected_type: u32,
        expected_key: u32,
        expected_value: u32,
    },
}

/// Reads the layout version and the maps of an eBPF object.
pub fn read_object(bytes: &[u8]) -> Result<ObjectAbi, AbiError> {
    let file = object::File::parse(bytes)?;
    let little = file.is_little_endian();
    let u32_at = |data: &[u8], offset: u64, what: &str| -> Result<u32, AbiError> {
        let start = usize::try_from(offset).map_err(|_| AbiError::OutOfBounds(what.into()))?;
        let word: [u8; 4] = data
            .get(start..start + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| AbiError::OutOfBounds(what.into()))?;
        Ok(if little {
            u32::from_le_bytes(word)
        } else {
            u32::from_be_bytes(word)
        })
    };

    let version_section = file
        .section_by_name(LAYOUT_VERSION_SECTION)
        .ok_or(AbiError::MissingSection(LAYOUT_VERSION_SECTION))?;
    let version_symbol = file
        .symbols()
        .find(|s| {
            s.name() == Ok(LAYOUT_VERSION_SYMBOL)
                && s.section_index() == Some(version_section.index())
        })
        .ok_or(AbiError::MissingSymbol(LAYOUT_VERSION_SYMBOL))?;
    // In a relocatable object a symbol's address is its offset in its section.
    let layout_version = u32_at(
        version_section.data()?,
        version_symbol.address(),
        LAYOUT_VERSION_SYMBOL,
    )?;

    let maps_section = file
        .section_by_name(MAPS_SECTION)
        .ok_or(AbiError::MissingSection(MAPS_SECTION))?;
    let maps_data = maps_section.data()?;
    let mut maps = symbols_in(&file, maps_section.index())
        .map(|symbol| {
            let name = symbol.name()?.to_owned();
            // struct bpf_map_def { type, key_size, value_size, max_entries, ... }: u32s.
            let field = |i: u64| u32_at(maps_data, symbol.address() + 4 * i, &name);
            Ok(ObjectMap {
                map_type: field(0)?,
                key_size: field(1)?,
                value_size: field(2)?,
                max_entries: field(3)?,
                name: name.clone(),
            })
        })
        .collect::<Result<Vec<_>, AbiError>>()?;
    // aya turns every data section into a map of its own (an array of one
    // value as large as the section): list those too.
    let data_maps = file.sections().filter_map(|section| {
        let name = section.name().ok()?;
        [".data", ".rodata", ".bss"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            .then(|| ObjectMap {
                name: name.to_owned(),
                map_type: abi::MapType::Array.raw(),
                key_size: 4,
                value_size: u32::try_from(section.size()).unwrap_or(u32::MAX),
                max_entries: 1,
            })
    });
    maps.extend(data_maps);
    Ok(ObjectAbi {
        layout_version,
        maps,
    })
}

/// The named data symbols of a section (each map definition is one).
fn symbols_in<'data, 'file>(
    file: &'file object::File<'data>,
    section: SectionIndex,
) -> impl Iterator<Item = object::Symbol<'data, 'file>> {
    file.symbols().filter(move |s| {
        s.section_index() == Some(section)
            && s.kind() == SymbolKind::Data
            && s.name().is_ok_and(|n| !n.is_empty())
    })
}

/// Whether `found` is what `filter_common::abi` describes: the same layout
/// version, and exactly the maps of [`abi::MAPS`] with their types, sizes
/// and (where the table fixes them) entries.
pub fn check(found: &ObjectAbi) -> Result<(), AbiError> {
    if found.layout_version != LAYOUT_VERSION {
        return Err(AbiError::Version {
            object: found.layout_version,
            expected: LAYOUT_VERSION,
        });
    }
    for map in &found.maps {
        let expected = abi::map(&map.name).ok_or_else(|| AbiError::Unlisted(map.name.clone()))?;
        if (map.map_type, map.key_size, map.value_size)
            != (
                expected.map_type.raw(),
                expected.key_size,
                expected.value_size,
            )
        {
            return Err(AbiError::Mismatch {
                name: map.name.clone(),
                found_type: map.map_type,
                found_key: map.key_size,
                found_value: map.value_size,
                expected_type: expected.map_type.raw(),
                expected_key: expected.key_size,
                expected_value: expected.value_size,
            });
        }
        if expected.entries != 0 && map.max_entries != expected.entries {
            return Err(AbiError::Entries {
                name: map.name.clone(),
                found: map.max_entries,
                expected: expected.entries,
            });
        }
    }
    if let Some(missing) = abi::MAPS
        .iter()
        .find(|m| !found.maps.iter().any(|f| f.name == m.name))
    {
        return Err(AbiError::Missing(missing.name));
    }
    Ok(())
}

/// Checks the embedded program ([`crate::EBPF_OBJECT`]) against `filter_common::abi`.
pub fn check_object() -> Result<(), AbiError> {
    check(&read_object(crate::EBPF_OBJECT)?)
}
