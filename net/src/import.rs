//! Stock import files: CSV with a header (`sku,location,on_hand[,safety_stock,backorder_limit]`)
//! or JSON lines with those fields (a tenant export of `reservoir restore --tenant` works as it
//! is), parsed a line at a time into [`WireImportRow`]s. The CLI (`reservoir import FILE`)
//! feeds it a file's lines; the HTTP gateway feeds it a request body's lines as they arrive.

use crate::operation::WireImportRow;

/// Where a SKU is when a row names no location.
pub const LOCATION_DEFAULT: &str = "main";

/// Why the server would refuse `row`'s names (`name_too_long`, `invalid_name` ...), if it
/// would. The server refuses an import whose rows name anything it does not take as a whole,
/// so the gateway answers such rows itself, row by row, and sends the rest; the CLI refuses
/// the file before it sends anything.
pub fn row_name_refusal(row: &WireImportRow) -> Option<reservoir_engine::ResultCode> {
    let sku = reservoir_engine::Sku::new(&row.sku).err();
    let location = reservoir_engine::Location::new(&row.location).err();
    sku.or(location).map(reservoir_engine::ResultCode::from)
}

/// What a 10,000-row part of rows whose names pass [`row_name_refusal`] encodes to at most,
/// in bytes: each row is two names of at most `NAME_BYTES_MAX` with a length byte each, an
/// `i64` and two optional `i64`s. Such a part always fits a frame (asserted below), so only
/// names decide whether a part can be sent.
pub const IMPORT_PART_BYTES_MAX: usize = IMPORT_REQUEST_OVERHEAD_BYTES_MAX
    + reservoir_engine::IMPORT_ROWS_MAX * (2 * (1 + reservoir_engine::NAME_BYTES_MAX) + 8 + 2 * 9);
/// An import request's bytes besides its rows: the frame header, type, request id, operation
/// count and kind, the operation id (at most `STRING_BYTES_MAX`) and the row count, rounded up.
const IMPORT_REQUEST_OVERHEAD_BYTES_MAX: usize = 1_024;
const _: () = assert!(IMPORT_PART_BYTES_MAX <= crate::wire::FRAME_BYTES_MAX);

/// How the lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    JsonLines,
    /// JSON lines if the first non-blank line starts with `{`, else CSV.
    Detect,
}

/// A line that does not parse (1-based line number of the file or body).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ImportError {
    pub line: usize,
    pub message: String,
}

/// Where the columns of a CSV file are (from its header).
#[derive(Clone, Debug)]
struct Columns {
    sku: usize,
    on_hand: usize,
    location: Option<usize>,
    safety_stock: Option<usize>,
    backorder_limit: Option<usize>,
    /// Columns in the header.
    count: usize,
}

/// Parses an import a line at a time.
#[derive(Clone, Debug)]
pub struct ImportParser {
    format: ImportFormat,
    columns: Option<Columns>,
    line: usize,
}

/// The columns a CSV header may name (matched without regard to ASCII case), in their order.
pub const CSV_COLUMNS: [&str; 5] = ["sku", "location", "on_hand", "safety_stock", "backorder_limit"];

/// A JSON line's row. Regression (review, tenth session): unknown keys were ignored, so a row
/// that misspelt `location` (`"loc"`) set the stock of the SKU at `main`, overwriting it; they
/// are refused now. `reserved` is what a tenant export adds: read, not imported (an import
/// sets stock and policy, never reservations).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    sku: String,
    location: Option<String>,
    on_hand: i64,
    safety_stock: Option<i64>,
    backorder_limit: Option<i64>,
    #[serde(rename = "reserved")]
    _reserved: Option<i64>,
}

impl ImportParser {
    pub fn new(format: ImportFormat) -> ImportParser {
        ImportParser { format, columns: None, line: 0 }
    }

    /// Lines given so far (blank ones and headers included).
    pub fn lines_read(&self) -> usize {
        self.line
    }

    /// The next line (without its line end). `Ok(None)` for a blank line, the CSV header and
    /// a tenant export's header line.
    pub fn line(&mut self, text: &str) -> Result<Option<WireImportRow>, ImportError> {
        self.line += 1;
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            return Ok(None);
        }
        if self.format == ImportFormat::Detect {
            self.format = if text.trim_start().starts_with('{') { ImportFormat::JsonLines } else { ImportFormat::Csv };
        }
        debug_assert_ne!(self.format, ImportFormat::Detect, "decided by the first non-blank line");
        match self.format {
            ImportFormat::JsonLines => self.json_line(text),
            _ => self.csv_line(text),
        }
    }

    fn error(&self, message: impl Into<String>) -> ImportError {
        ImportError { line: self.line, message: message.into() }
    }

    fn json_line(&self, text: &str) -> Result<Option<WireImportRow>, ImportError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|error| self.error(error.to_string()))?;
        if value.get("export").and_then(|export| export.as_str()) == Some("reservoir-tenant")
            && value.get("sku").is_none()
        {
            return Ok(None); // the header line of a tenant export
        }
        let row: JsonRow = serde_json::from_value(value).map_err(|error| self.error(error.to_string()))?;
        Ok(Some(WireImportRow {
            sku: row.sku,
            location: row.location.unwrap_or_else(|| LOCATION_DEFAULT.to_owned()),
            on_hand: row.on_hand,
            safety_stock: row.safety_stock,
            backorder_limit: row.backorder_limit,
        }))
    }

    fn csv_line(&mut self, text: &str) -> Result<Option<WireImportRow>, ImportError> {
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let Some(columns) = &self.columns else {
            // Regression (review, tenth session): columns the parser did not know were
            // ignored, so a header that misspelt `location` (`Location` was not matched,
            // `warehouse`, `loc`) set every row's stock at `main`, overwriting it.
            for (index, name) in fields.iter().enumerate() {
                if !CSV_COLUMNS.iter().any(|known| known.eq_ignore_ascii_case(name)) {
                    return Err(self.error(format!(
                        "the CSV header names an unknown column {name:?} (the columns are {})",
                        CSV_COLUMNS.join(", ")
                    )));
                }
                if fields[..index].iter().any(|earlier| earlier.eq_ignore_ascii_case(name)) {
                    return Err(self.error(format!("the CSV header names column {name:?} twice")));
                }
            }
            let column = |name: &str| fields.iter().position(|column| column.eq_ignore_ascii_case(name));
            let sku = column("sku").ok_or_else(|| self.error("the CSV header has no sku column"))?;
            let on_hand = column("on_hand").ok_or_else(|| self.error("the CSV header has no on_hand column"))?;
            self.columns = Some(Columns {
                sku,
                on_hand,
                location: column("location"),
                safety_stock: column("safety_stock"),
                backorder_limit: column("backorder_limit"),
                count: fields.len(),
            });
            return Ok(None);
        };
        if fields.len() > columns.count {
            // A field past the header's columns would be dropped: a name with a comma in it,
            // or a shifted row.
            return Err(self.error(format!("{} fields, but the header names {} columns", fields.len(), columns.count)));
        }
        let field = |index: usize| fields.get(index).copied().unwrap_or_default();
        let number_at = |index: usize| -> Result<i64, ImportError> {
            field(index).parse().map_err(|_| self.error(format!("{:?} is not a number", field(index))))
        };
        let optional = |index: Option<usize>| -> Result<Option<i64>, ImportError> {
            match index {
                Some(index) if !field(index).is_empty() => number_at(index).map(Some),
                _ => Ok(None),
            }
        };
        Ok(Some(WireImportRow {
            sku: field(columns.sku).to_owned(),
            location: columns
                .location
                .map(field)
                .filter(|text| !text.is_empty())
                .unwrap_or(LOCATION_DEFAULT)
                .to_owned(),
            on_hand: number_at(columns.on_hand)?,
            safety_stock: optional(columns.safety_stock)?,
            backorder_limit: optional(columns.backorder_limit)?,
        }))
    }
}

/// Every row of a whole file's text.
pub fn parse_import(text: &str, format: ImportFormat) -> Result<Vec<WireImportRow>, ImportError> {
    let mut parser = ImportParser::new(format);
    let mut rows = Vec::new();
    for line in text.lines() {
        if let Some(row) = parser.line(line)? {
            rows.push(row);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound that lets the gateway cut parts by rows alone: the largest part of rows whose
    /// names the server takes encodes within `IMPORT_PART_BYTES_MAX`, within a frame.
    #[test]
    fn a_part_of_rows_with_names_the_server_takes_always_fits_a_frame() {
        let longest = "S".repeat(reservoir_engine::NAME_BYTES_MAX);
        let row = WireImportRow {
            sku: longest.clone(),
            location: longest.clone(),
            on_hand: i64::MAX,
            safety_stock: Some(i64::MAX),
            backorder_limit: Some(i64::MAX),
        };
        assert_eq!(row_name_refusal(&row), None);
        let operation = crate::Operation::Import {
            operation: "K".repeat(crate::wire::STRING_BYTES_MAX),
            rows: vec![row.clone(); reservoir_engine::IMPORT_ROWS_MAX],
        };
        let request = crate::message::Request { request_id: u64::MAX, operations: vec![operation] };
        let mut bytes = Vec::new();
        crate::message::ClientFrame::Request(request).encode(&mut bytes).unwrap();
        assert!(bytes.len() <= IMPORT_PART_BYTES_MAX, "{} bytes", bytes.len());
        // One byte longer, and the server refuses the row's name.
        let long = WireImportRow { sku: format!("{longest}S"), ..row };
        assert_eq!(row_name_refusal(&long), Some(reservoir_engine::ResultCode::NameTooLong));
        let unprintable = WireImportRow { location: "DC\u{7}".into(), ..long.clone() };
        assert!(row_name_refusal(&WireImportRow { sku: "A".into(), ..unprintable }).is_some());
    }

    #[test]
    fn csv_and_json_lines_give_the_same_rows() {
        let csv = "sku, location,on_hand,safety_stock\nA,DC1,5,\r\nB,,7,2\n\n";
        let json = "{\"export\":\"reservoir-tenant\",\"version\":1,\"tenant\":\"demo\",\"lsn\":3}\n{\"sku\":\"A\",\"location\":\"DC1\",\"on_hand\":5}\n{\"sku\":\"B\",\"on_hand\":7,\"safety_stock\":2}\n";
        let rows = parse_import(csv, ImportFormat::Detect).unwrap();
        assert_eq!(rows, parse_import(json, ImportFormat::Detect).unwrap());
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].location.as_str(), rows[1].safety_stock), (LOCATION_DEFAULT, Some(2)));
    }

    /// Regression (review, tenth session): a misspelt column or key was ignored, and every
    /// row went to location `main`, overwriting its stock. Now it is refused, naming the
    /// line; header names match without regard to case; a row with more fields than the
    /// header has columns is refused; a tenant export (with its header line and `reserved`)
    /// still reads.
    #[test]
    fn a_misspelt_column_or_key_is_refused_not_sent_to_main() {
        for csv in ["sku,warehouse,on_hand\nA,DC1,5\n", "sku,loc,on_hand\nA,DC1,5\n", "sku,location,location,on_hand\n"]
        {
            let error = parse_import(csv, ImportFormat::Csv).unwrap_err();
            assert_eq!(error.line, 1, "{csv}: {error}");
        }
        let rows = parse_import("SKU,Location,On_Hand\nA,DC1,5\n", ImportFormat::Csv).unwrap();
        assert_eq!((rows[0].sku.as_str(), rows[0].location.as_str(), rows[0].on_hand), ("A", "DC1", 5));
        let error = parse_import("sku,location,on_hand\nA,DC1,5\nB,DC,2,5\n", ImportFormat::Csv).unwrap_err();
        assert_eq!(error.line, 3, "{error}");
        for json in ["{\"sku\":\"A\",\"loc\":\"DC1\",\"on_hand\":5}", "{\"export\":\"x\",\"sku\":\"A\",\"on_hand\":5}"]
        {
            let error = parse_import(json, ImportFormat::JsonLines).unwrap_err();
            assert!(error.message.contains("unknown field"), "{json}: {error}");
        }
        let export = "{\"export\":\"reservoir-tenant\",\"version\":1,\"tenant\":\"demo\",\"lsn\":7}\n\
                      {\"sku\":\"A\",\"location\":\"DC1\",\"on_hand\":5,\"safety_stock\":0,\"backorder_limit\":0,\"reserved\":2}\n";
        let rows = parse_import(export, ImportFormat::Detect).unwrap();
        assert_eq!((rows.len(), rows[0].location.as_str(), rows[0].on_hand), (1, "DC1", 5));
    }

    #[test]
    fn a_bad_line_names_its_number() {
        let error = parse_import("sku,on_hand\nA,5\nB,five\n", ImportFormat::Csv).unwrap_err();
        assert_eq!(error.line, 3);
        assert!(error.to_string().contains("not a number"), "{error}");
        let error = parse_import("location,on_hand\n", ImportFormat::Csv).unwrap_err();
        assert_eq!((error.line, error.message.as_str()), (1, "the CSV header has no sku column"));
        let error = parse_import("{\"sku\":\"A\"}\n", ImportFormat::JsonLines).unwrap_err();
        assert!(error.message.contains("on_hand"), "{error}");
    }
}
