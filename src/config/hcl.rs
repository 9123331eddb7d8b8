//! A small reader for HCL **version 1**, the format of SPIRE's `server.conf` and
//! `agent.conf`, plus the JSON form SPIRE accepts for the same files.
//!
//! No published crate reads HCL1, and HCL2 readers reject forms that real SPIRE configs use
//! (a comma after an attribute, several attributes on one line), so cairn carries its own.
//! The reader produces a generic tree ([`Object`] / [`Value`]) that keeps source order,
//! repeated keys and the line of every key; mapping that tree onto typed config structs is
//! left to the caller.
//!
//! What is accepted follows HCL1's own scanner and parser:
//! - comments `#` and `//` to end of line, and `/* ... */`;
//! - items `key = value`, `key { ... }`, `key = { ... }`, `key "l1" "l2" { ... }` (labels may
//!   also be bare identifiers), separated by newlines, one comma, or plain whitespace;
//! - values: quoted strings, heredocs, integers (decimal, `0x` hex, leading-`0` octal, as Go's
//!   `strconv.ParseInt(s, 0, 64)` reads them), floats, `true` / `false`, lists, objects;
//! - `${...}` inside a quoted string is kept verbatim (escapes inside it are not processed),
//!   and quotes inside it do not end the string, as in HCL1;
//! - a file whose first non-blank character is `{` is read as JSON, as HCL1's `hcl.Decode`
//!   (which SPIRE calls) does.
//!
//! Deliberate differences from HCL1, on edge cases no documented SPIRE config relies on:
//! - lists are strict: elements need a comma between them, and `[,]` / `[1,,2]` are errors
//!   (HCL1 silently skips the extra commas);
//! - a heredoc may end at end of input, its anchor line may carry trailing blanks, and a
//!   trailing `\r` is dropped from every heredoc line, so CRLF files give the same values as
//!   LF files;
//! - `<<-` strips the indentation of the closing anchor line from every line, as HCL1 does,
//!   but whitespace-only lines no longer cancel the stripping, and the closing line's own
//!   indentation is never part of the value;
//! - `\x` and octal escapes above `0x7f` are errors: they stand for raw bytes, which cannot be
//!   placed in UTF-8 text;
//! - in JSON, an array whose elements are all objects stays a [`Value::List`]; HCL1 flattens
//!   it into repeated keys. A list of objects and repeated blocks must therefore mean the
//!   same to the typed layer, which it has to handle anyway for HCL's own `key = [{ ... }]`.
//!
//! Untrusted input never panics: nesting (objects, lists and block labels together) is capped
//! at 64 levels, so hostile input gets an error rather than a stack overflow.

use super::quote;
use std::fmt::Write as _;

/// Deepest nesting of objects and lists (block labels count as levels) accepted by the readers.
const MAX_DEPTH: usize = 64;

/// A parsed HCL1 (or JSON) value. Objects keep source order and keep repeated keys (HCL1 accumulates them).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted string or heredoc, escapes already resolved (JSON `null` also reads as an
    /// empty string, as in HCL1).
    String(String),
    /// An integer literal.
    Int(i64),
    /// A number with a fraction or an exponent.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A `[ ... ]` list, elements in source order.
    List(Vec<Value>),
    /// A `{ ... }` object or block body.
    Object(Object),
}

/// The body of a block or object: its items in source order, repeated keys kept as separate items.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object {
    /// The items, in the order they appear in the source.
    pub items: Vec<Item>,
}

/// One `key = value` (or `key { ... }`) entry of an [`Object`].
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The key, unquoted.
    pub key: String,
    /// The value; for a labelled block, nested objects keyed by the labels.
    pub value: Value,
    /// The 1-based line on which the key (or label) appears.
    pub line: u32,
}

impl Object {
    /// Every item with the key `key`, in source order.
    ///
    /// HCL1 lets a key repeat (several `NodeAttestor` blocks, several `federates_with`
    /// blocks), so a lookup yields all of them rather than the first or the last.
    pub fn get_all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a Item> + use<'a> {
        // Owning the key keeps the iterator independent of the caller's borrow.
        let key = key.to_owned();
        self.items.iter().filter(move |item| item.key == key)
    }
}

/// A syntax error, with the 1-based line and column (in characters) where it was found.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("line {line}, column {column}: {message}")]
pub struct HclError {
    /// 1-based line of the offending input.
    pub line: u32,
    /// 1-based column, counted in characters, of the offending input.
    pub column: u32,
    /// What was wrong and, where it helps, what was expected instead.
    pub message: String,
}

fn error(line: u32, column: u32, message: impl Into<String>) -> HclError {
    HclError { line, column, message: message.into() }
}

fn too_deep(line: u32, column: u32) -> HclError {
    error(line, column, format!("nesting too deep: more than {MAX_DEPTH} levels of blocks, objects and lists"))
}

/// Parses an HCL1 config file: the whole text is the body of one object.
///
/// Empty input (or only comments) gives an empty object. Input whose first non-blank
/// character is `{` is read as JSON with [`parse_json`], as SPIRE's HCL library does.
///
/// # Errors
///
/// Returns an [`HclError`] naming the line and column of the first syntax error.
pub fn parse(text: &str) -> Result<Object, HclError> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    if body.trim_start().starts_with('{') {
        return parse_json(text);
    }
    let mut parser = Parser { lexer: Lexer { cur: Cursor::new(text) }, peeked: None };
    parser.body(0, None)
}

/// Parses the JSON form of a config file; the top level must be an object.
///
/// Keys keep document order and duplicates accumulate as in HCL; a labelled block appears
/// in JSON as nested objects, which is exactly the tree [`parse`] builds for it. Numbers
/// without fraction or exponent become [`Value::Int`], others [`Value::Float`]; `null`
/// becomes an empty string, as in HCL1.
///
/// # Errors
///
/// Returns an [`HclError`] naming the line and column of the first syntax error, or of a
/// top level that is not an object.
pub fn parse_json(text: &str) -> Result<Object, HclError> {
    let mut reader = JsonReader { cur: Cursor::new(text) };
    reader.skip_ws();
    let (line, col) = reader.cur.position();
    match reader.cur.peek() {
        Some('{') => {
            reader.cur.bump();
        }
        Some(c) => {
            return Err(error(
                line,
                col,
                format!("expected '{{' at the start of a JSON config (the top level must be an object), found {}", describe_char(c)),
            ));
        }
        None => {
            return Err(error(line, col, "expected '{' at the start of a JSON config, found end of input"));
        }
    }
    let object = reader.object(0, line, col)?;
    reader.skip_ws();
    if let Some(c) = reader.cur.peek() {
        let (line, col) = reader.cur.position();
        return Err(error(line, col, format!("unexpected {} after the top-level JSON object", describe_char(c))));
    }
    Ok(object)
}

/// Expands environment variables the way SPIRE's `-expandEnv` flag does (Go's `os.ExpandEnv`),
/// on the whole file text before parsing.
///
/// - `$NAME` (a letter or `_`, then letters, digits, `_`) and `${ANYTHING}` are replaced by
///   `lookup(name)`, or by the empty string when `lookup` returns `None`;
/// - `${}` and an unclosed `${` are dropped, as Go does;
/// - a `$` not followed by a name or `{` stays literally, including `$$`, `$1`, `$?` and a
///   trailing `$`. (Go would look these up as one-character "shell special" variable names,
///   which are never set, and so delete them; keeping the text is what an author writing a
///   `$` in a regex or a password means.)
#[must_use]
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(rest.get(..dollar).unwrap_or_default());
        let after = rest.get(dollar + 1..).unwrap_or_default();
        let mut chars = after.chars();
        match chars.next() {
            Some('{') => {
                let inner = after.get(1..).unwrap_or_default();
                match inner.find('}') {
                    Some(0) => rest = inner.get(1..).unwrap_or_default(),
                    Some(close) => {
                        let name = inner.get(..close).unwrap_or_default();
                        out.push_str(&lookup(name).unwrap_or_default());
                        rest = inner.get(close + 1..).unwrap_or_default();
                    }
                    None => rest = inner,
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                let name = after.get(..len).unwrap_or_default();
                out.push_str(&lookup(name).unwrap_or_default());
                rest = after.get(len..).unwrap_or_default();
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Character cursor shared by the HCL lexer and the JSON reader.

/// Walks the text one character at a time while tracking the line and column.
struct Cursor<'s> {
    src: &'s str,
    pos: usize,
    line: u32,
    col: u32,
}

impl<'s> Cursor<'s> {
    fn new(src: &'s str) -> Self {
        // A byte-order mark is invisible in editors; Windows tools add one, so skip it.
        let pos = if src.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 };
        Cursor { src, pos, line: 1, col: 1 }
    }

    fn position(&self) -> (u32, u32) {
        (self.line, self.col)
    }

    fn rest(&self) -> &'s str {
        self.src.get(self.pos..).unwrap_or_default()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else {
            self.col = self.col.saturating_add(1);
        }
        Some(c)
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.bump();
            true
        } else {
            false
        }
    }

    /// Moves forward over `len` bytes of the remaining text (always a whole number of
    /// characters, since callers measure it with `str` methods).
    fn advance(&mut self, len: usize) {
        let end = self.pos.saturating_add(len);
        while self.pos < end {
            if self.bump().is_none() {
                break;
            }
        }
    }
}

fn describe_char(c: char) -> String {
    format!("character '{}'", c.escape_debug())
}

// ---------------------------------------------------------------------------------------------
// HCL1 lexer.

#[derive(Debug)]
enum Tok {
    Ident(String),
    Str(String),
    Heredoc(String),
    Int(i64),
    Float(f64),
    LBrace,
    RBrace,
    LBrack,
    RBrack,
    Assign,
    Comma,
    Eof,
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    line: u32,
    col: u32,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) => format!("identifier {}", quote(s)),
        Tok::Str(s) => format!("string {}", quote(s)),
        Tok::Heredoc(_) => "a heredoc".to_owned(),
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::LBrace => "'{'".to_owned(),
        Tok::RBrace => "'}'".to_owned(),
        Tok::LBrack => "'['".to_owned(),
        Tok::RBrack => "']'".to_owned(),
        Tok::Assign => "'='".to_owned(),
        Tok::Comma => "','".to_owned(),
        Tok::Eof => "end of input".to_owned(),
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_continue(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

struct Lexer<'s> {
    cur: Cursor<'s>,
}

impl Lexer<'_> {
    fn next_token(&mut self) -> Result<Token, HclError> {
        self.skip_trivia()?;
        let (line, col) = self.cur.position();
        let Some(c) = self.cur.peek() else {
            return Ok(Token { tok: Tok::Eof, line, col });
        };
        let single = match c {
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            '[' => Some(Tok::LBrack),
            ']' => Some(Tok::RBrack),
            '=' => Some(Tok::Assign),
            ',' => Some(Tok::Comma),
            _ => None,
        };
        let tok = if let Some(tok) = single {
            self.cur.bump();
            tok
        } else if c == '"' {
            Tok::Str(self.string()?)
        } else if c == '<' {
            Tok::Heredoc(self.heredoc()?)
        } else if c == '-' || c.is_ascii_digit() {
            self.number()?
        } else if is_ident_start(c) {
            let start = self.cur.pos;
            while self.cur.peek().is_some_and(is_ident_continue) {
                self.cur.bump();
            }
            Tok::Ident(self.cur.src.get(start..self.cur.pos).unwrap_or_default().to_owned())
        } else {
            let hint = match c {
                ':' => " (HCL assigns with '=')",
                '\'' => " (HCL strings use double quotes)",
                _ => "",
            };
            return Err(error(line, col, format!("unexpected {}{hint}", describe_char(c))));
        };
        Ok(Token { tok, line, col })
    }

    /// Skips whitespace and the three kinds of comments.
    fn skip_trivia(&mut self) -> Result<(), HclError> {
        loop {
            match (self.cur.peek(), self.cur.peek_second()) {
                (Some(' ' | '\t' | '\r' | '\n'), _) => {
                    self.cur.bump();
                }
                (Some('#'), _) | (Some('/'), Some('/')) => {
                    while self.cur.peek().is_some_and(|c| c != '\n') {
                        self.cur.bump();
                    }
                }
                (Some('/'), Some('*')) => {
                    let (line, col) = self.cur.position();
                    self.cur.bump();
                    self.cur.bump();
                    loop {
                        match self.cur.bump() {
                            None => {
                                return Err(error(line, col, "unterminated comment: '/*' without a closing '*/'"));
                            }
                            Some('*') if self.cur.peek() == Some('/') => {
                                self.cur.bump();
                                break;
                            }
                            Some(_) => {}
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Reads a double-quoted string, the cursor being on the opening quote.
    fn string(&mut self) -> Result<String, HclError> {
        let (line, col) = self.cur.position();
        self.cur.bump();
        let unterminated = || {
            error(
                line,
                col,
                "unterminated string: a quoted string must end on the line where it starts \
                 (use a heredoc for text over several lines)",
            )
        };
        let mut out = String::new();
        // Depth of `${ ... }` we are inside; HCL1 copies that part verbatim and lets it hold
        // quotes, so `"${lookup("a")}"` is one string.
        let mut braces: u32 = 0;
        loop {
            let (esc_line, esc_col) = self.cur.position();
            let Some(c) = self.cur.bump() else {
                return Err(unterminated());
            };
            if braces > 0 {
                out.push(c);
                match c {
                    '{' => braces = braces.saturating_add(1),
                    '}' => braces -= 1,
                    '\\' => out.push(self.cur.bump().ok_or_else(unterminated)?),
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => return Ok(out),
                '\n' => return Err(unterminated()),
                '$' if self.cur.peek() == Some('{') => {
                    self.cur.bump();
                    out.push_str("${");
                    braces = 1;
                }
                '\\' => out.push(self.escape(esc_line, esc_col)?),
                c => out.push(c),
            }
        }
    }

    /// Resolves one backslash escape (the backslash already read, at `line`:`col`), with
    /// the escapes HCL1 accepts: Go's set for double-quoted strings.
    fn escape(&mut self, line: u32, col: u32) -> Result<char, HclError> {
        let Some(c) = self.cur.bump() else {
            return Err(error(line, col, "unterminated string"));
        };
        let simple = match c {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            '"' => Some('"'),
            _ => None,
        };
        if let Some(ch) = simple {
            return Ok(ch);
        }
        let (radix, count, first) = match c {
            '0'..='7' => (8, 2, c.to_digit(8).unwrap_or(0)),
            'x' => (16, 2, 0),
            'u' => (16, 4, 0),
            'U' => (16, 8, 0),
            other => {
                return Err(error(line, col, format!("unknown escape sequence '\\{}' in string", other.escape_debug())));
            }
        };
        let mut value = first;
        for _ in 0..count {
            let digit = self.cur.peek().and_then(|d| d.to_digit(radix));
            let Some(digit) = digit else {
                return Err(error(line, col, format!("escape '\\{c}' needs {count} digits in base {radix}")));
            };
            self.cur.bump();
            value =
                value.checked_mul(radix).and_then(|v| v.checked_add(digit)).ok_or_else(|| error(line, col, "escape value out of range"))?;
        }
        if matches!(c, '0'..='7' | 'x') && value > 0x7f {
            return Err(error(line, col, "byte escape above 0x7f cannot form UTF-8 text; use \\u for non-ASCII characters"));
        }
        char::from_u32(value).ok_or_else(|| error(line, col, format!("escape gives {value:#x}, which is not a Unicode character")))
    }

    /// Reads a heredoc (`<<EOF` or `<<-EOF` up to a line holding only `EOF`), the cursor
    /// being on the first `<`.
    fn heredoc(&mut self) -> Result<String, HclError> {
        let (line, col) = self.cur.position();
        self.cur.bump();
        if !self.cur.eat('<') {
            return Err(error(line, col, "unexpected character '<' (a heredoc starts with '<<', as in <<EOF)"));
        }
        let strip_indent = self.cur.eat('-');
        let start = self.cur.pos;
        while self.cur.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.cur.bump();
        }
        let anchor = self.cur.src.get(start..self.cur.pos).unwrap_or_default();
        if anchor.is_empty() {
            return Err(error(line, col, "heredoc needs an anchor name after '<<', as in <<EOF"));
        }
        while matches!(self.cur.peek(), Some(' ' | '\t' | '\r')) {
            self.cur.bump();
        }
        if !self.cur.eat('\n') {
            let (l, c) = self.cur.position();
            return Err(error(l, c, format!("expected a line break after heredoc anchor {}", quote(anchor))));
        }
        let mut lines: Vec<&str> = Vec::new();
        loop {
            let rest = self.cur.rest();
            if rest.is_empty() {
                return Err(error(line, col, format!("unterminated heredoc: no line {} closes the heredoc started here", quote(anchor))));
            }
            let raw = rest.find('\n').map_or(rest, |nl| rest.get(..nl).unwrap_or_default());
            let text = raw.strip_suffix('\r').unwrap_or(raw);
            let body = text.trim_start_matches([' ', '\t']);
            if body.trim_end_matches([' ', '\t']) == anchor {
                let margin = text.get(..text.len() - body.len()).unwrap_or_default();
                // Leave the line break to the trivia skipper.
                self.cur.advance(raw.len());
                return Ok(heredoc_value(&lines, strip_indent.then_some(margin)));
            }
            lines.push(text);
            self.cur.advance(raw.len());
            self.cur.eat('\n');
        }
    }

    /// Reads an integer or a float, the cursor being on a digit or `-`.
    fn number(&mut self) -> Result<Tok, HclError> {
        let (line, col) = self.cur.position();
        let start = self.cur.pos;
        let negative = self.cur.eat('-');
        if !self.cur.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(error(line, col, "expected a digit after '-'"));
        }
        let out_of_range = |text: &str| error(line, col, format!("number {text} is out of range for a 64-bit integer"));
        if self.cur.peek() == Some('0') && matches!(self.cur.peek_second(), Some('x' | 'X')) {
            self.cur.bump();
            self.cur.bump();
            let digits_start = self.cur.pos;
            while self.cur.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                self.cur.bump();
            }
            let digits = self.cur.src.get(digits_start..self.cur.pos).unwrap_or_default();
            if digits.is_empty() {
                return Err(error(line, col, "expected hexadecimal digits after '0x'"));
            }
            self.check_number_end()?;
            let signed = format!("{}{digits}", if negative { "-" } else { "" });
            let text = self.cur.src.get(start..self.cur.pos).unwrap_or_default();
            return i64::from_str_radix(&signed, 16).map(Tok::Int).map_err(|_| out_of_range(text));
        }
        self.skip_digits();
        let mut is_float = false;
        if self.cur.eat('.') {
            is_float = true;
            self.skip_digits();
        }
        if matches!(self.cur.peek(), Some('e' | 'E')) {
            is_float = true;
            self.cur.bump();
            if !self.cur.eat('+') {
                self.cur.eat('-');
            }
            if !self.cur.peek().is_some_and(|c| c.is_ascii_digit()) {
                let (l, c) = self.cur.position();
                return Err(error(l, c, "expected digits in the exponent of a number"));
            }
            self.skip_digits();
        }
        self.check_number_end()?;
        let text = self.cur.src.get(start..self.cur.pos).unwrap_or_default();
        if is_float {
            return match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
                _ => Err(error(line, col, format!("number {text} is out of range"))),
            };
        }
        let unsigned = text.trim_start_matches('-');
        if unsigned.len() > 1 && unsigned.starts_with('0') {
            // Go's ParseInt with base 0, which HCL1 uses, reads a leading 0 as octal.
            let octal = unsigned.get(1..).unwrap_or_default();
            if !octal.chars().all(|c| matches!(c, '0'..='7')) {
                return Err(error(line, col, format!("invalid octal number {text} (a leading 0 makes an integer octal)")));
            }
            let signed = format!("{}{octal}", if negative { "-" } else { "" });
            return i64::from_str_radix(&signed, 8).map(Tok::Int).map_err(|_| out_of_range(text));
        }
        text.parse::<i64>().map(Tok::Int).map_err(|_| out_of_range(text))
    }

    fn skip_digits(&mut self) {
        while self.cur.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.cur.bump();
        }
    }

    /// Rejects a number glued to letters, typically an unquoted duration such as `10s`.
    fn check_number_end(&self) -> Result<(), HclError> {
        match self.cur.peek() {
            Some(c) if c.is_alphanumeric() || matches!(c, '_' | '.') => {
                let (line, col) = self.cur.position();
                Err(error(
                    line,
                    col,
                    format!("unexpected {} after a number (values such as durations must be quoted, e.g. \"10s\")", describe_char(c)),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Joins heredoc lines, each ending in a line break. With `margin` (the `<<-` form), the
/// closing line's indentation is removed from every line, but only if every non-blank line
/// starts with it, as HCL1 does.
fn heredoc_value(lines: &[&str], margin: Option<&str>) -> String {
    let blank = |l: &str| l.trim_matches([' ', '\t']).is_empty();
    let margin = margin.filter(|m| !m.is_empty() && lines.iter().all(|l| l.starts_with(m) || blank(l)));
    let mut out = String::new();
    for line in lines {
        let line = match margin {
            Some(m) => line.strip_prefix(m).unwrap_or_default(),
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HCL1 parser: recursive descent over the lexer's tokens, with one token of lookahead.

/// Where a block, object or list opened, for "unexpected end of input" messages.
struct Open {
    line: u32,
    col: u32,
    what: String,
}

/// What a value is being read for, to phrase errors.
enum ValueFor<'k> {
    Key(&'k str),
    ListElement,
}

struct Parser<'s> {
    lexer: Lexer<'s>,
    peeked: Option<Token>,
}

impl Parser<'_> {
    fn next(&mut self) -> Result<Token, HclError> {
        match self.peeked.take() {
            Some(tok) => Ok(tok),
            None => self.lexer.next_token(),
        }
    }

    fn peek(&mut self) -> Result<&Token, HclError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lexer.next_token()?);
        }
        // Just filled above; the fallback only keeps this free of `unwrap`.
        Ok(self.peeked.get_or_insert(Token { tok: Tok::Eof, line: 0, col: 0 }))
    }

    /// Reads items up to the closing `}` (or end of input for the top level, `open` = None).
    fn body(&mut self, depth: usize, open: Option<&Open>) -> Result<Object, HclError> {
        if let Some(open) = open.filter(|_| depth > MAX_DEPTH) {
            return Err(too_deep(open.line, open.col));
        }
        let mut object = Object::default();
        loop {
            let tok = self.next()?;
            match tok.tok {
                Tok::Ident(key) | Tok::Str(key) => {
                    let item = self.item(key, tok.line, tok.col, depth)?;
                    object.items.push(item);
                    // HCL1 allows one comma after an item, whatever kind of item it is.
                    if matches!(self.peek()?.tok, Tok::Comma) {
                        self.next()?;
                    }
                }
                Tok::RBrace if open.is_some() => return Ok(object),
                Tok::RBrace => {
                    return Err(error(tok.line, tok.col, "unexpected '}': no block is open here"));
                }
                Tok::Eof => {
                    return match open {
                        None => Ok(object),
                        Some(open) => Err(error(
                            tok.line,
                            tok.col,
                            format!("unexpected end of input inside {} started at line {}: missing '}}'", open.what, open.line),
                        )),
                    };
                }
                other => {
                    return Err(error(
                        tok.line,
                        tok.col,
                        format!("expected a key{}, found {}", if open.is_some() { " or '}'" } else { "" }, describe(&other)),
                    ));
                }
            }
        }
    }

    /// Reads the rest of an item whose key has been read: `= value`, `{ body }`, or labels
    /// followed by `{ body }`.
    fn item(&mut self, key: String, line: u32, col: u32, depth: usize) -> Result<Item, HclError> {
        let mut labels: Vec<(String, u32)> = Vec::new();
        loop {
            let tok = self.next()?;
            match tok.tok {
                Tok::Ident(label) | Tok::Str(label) => {
                    // Each label adds a level of nesting, and the block body after it one more.
                    if depth + labels.len() + 2 > MAX_DEPTH {
                        return Err(too_deep(tok.line, tok.col));
                    }
                    labels.push((label, tok.line));
                }
                Tok::Assign if labels.is_empty() => {
                    let value = self.value(depth, &ValueFor::Key(&key))?;
                    return Ok(Item { key, value, line });
                }
                Tok::LBrace => {
                    let open = Open { line: tok.line, col: tok.col, what: format!("block {}", quote(&key)) };
                    let body = self.body(depth + labels.len() + 1, Some(&open))?;
                    // `key "a" "b" { body }` is `key { a { b { body } } }`.
                    let mut value = Value::Object(body);
                    for (label, label_line) in labels.into_iter().rev() {
                        value = Value::Object(Object { items: vec![Item { key: label, value, line: label_line }] });
                    }
                    return Ok(Item { key, value, line });
                }
                other => {
                    let message = if labels.is_empty() {
                        format!("expected '=' or '{{' after key {}, found {}", quote(&key), describe(&other))
                    } else {
                        let mut names = String::new();
                        for (label, _) in &labels {
                            let _ = write!(names, " {}", quote(label));
                        }
                        format!(
                            "expected '{{' after block {} (line {line}, column {col}) and its labels{names}, found {}",
                            quote(&key),
                            describe(&other)
                        )
                    };
                    return Err(error(tok.line, tok.col, message));
                }
            }
        }
    }

    fn value(&mut self, depth: usize, target: &ValueFor<'_>) -> Result<Value, HclError> {
        let tok = self.next()?;
        let value = match tok.tok {
            Tok::Str(s) | Tok::Heredoc(s) => Value::String(s),
            Tok::Int(i) => Value::Int(i),
            Tok::Float(f) => Value::Float(f),
            Tok::Ident(word) if word == "true" => Value::Bool(true),
            Tok::Ident(word) if word == "false" => Value::Bool(false),
            Tok::LBrace => {
                let what = match target {
                    ValueFor::Key(key) => format!("object {}", quote(key)),
                    ValueFor::ListElement => "object".to_owned(),
                };
                let open = Open { line: tok.line, col: tok.col, what };
                Value::Object(self.body(depth + 1, Some(&open))?)
            }
            Tok::LBrack => Value::List(self.list(depth + 1, tok.line, tok.col)?),
            other => {
                let wanted = match target {
                    ValueFor::Key(key) => format!("a value for key {}", quote(key)),
                    ValueFor::ListElement => "a list element".to_owned(),
                };
                let hint = if matches!(other, Tok::Ident(_)) { " (strings must be quoted)" } else { "" };
                return Err(error(tok.line, tok.col, format!("expected {wanted}, found {}{hint}", describe(&other))));
            }
        };
        Ok(value)
    }

    /// Reads list elements after the `[` at `line`:`col`, up to and including the `]`.
    fn list(&mut self, depth: usize, line: u32, col: u32) -> Result<Vec<Value>, HclError> {
        if depth > MAX_DEPTH {
            return Err(too_deep(line, col));
        }
        let unterminated =
            |tok: &Token| error(tok.line, tok.col, format!("unexpected end of input inside list started at line {line}: missing ']'"));
        let mut elements = Vec::new();
        loop {
            let next = self.peek()?;
            match next.tok {
                Tok::RBrack => {
                    self.next()?;
                    return Ok(elements);
                }
                Tok::Eof => return Err(unterminated(next)),
                _ => {}
            }
            elements.push(self.value(depth, &ValueFor::ListElement)?);
            let tok = self.next()?;
            match tok.tok {
                Tok::Comma => {}
                Tok::RBrack => return Ok(elements),
                Tok::Eof => return Err(unterminated(&tok)),
                other => {
                    return Err(error(
                        tok.line,
                        tok.col,
                        format!("expected ',' or ']' after a list element (list started at line {line}), found {}", describe(&other)),
                    ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON reader. Hand-written rather than serde_json so that key order, duplicate keys and the
// line of every key survive.

struct JsonReader<'s> {
    cur: Cursor<'s>,
}

impl JsonReader<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.cur.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.cur.bump();
        }
    }

    fn unexpected(&self, expected: &str) -> HclError {
        let (line, col) = self.cur.position();
        let found = self.cur.peek().map_or_else(|| "end of input".to_owned(), describe_char);
        error(line, col, format!("expected {expected}, found {found}"))
    }

    /// Reads members after the `{` at `line`:`col`, up to and including the `}`.
    fn object(&mut self, depth: usize, line: u32, col: u32) -> Result<Object, HclError> {
        if depth > MAX_DEPTH {
            return Err(too_deep(line, col));
        }
        let mut object = Object::default();
        self.skip_ws();
        if self.cur.eat('}') {
            return Ok(object);
        }
        loop {
            self.skip_ws();
            if self.cur.peek() != Some('"') {
                return Err(self.unexpected("a quoted key"));
            }
            let key_line = self.cur.line;
            let key = self.string()?;
            self.skip_ws();
            if !self.cur.eat(':') {
                return Err(self.unexpected(&format!("':' after key {}", quote(&key))));
            }
            self.skip_ws();
            let value = self.value(depth)?;
            object.items.push(Item { key, value, line: key_line });
            self.skip_ws();
            match self.cur.peek() {
                Some(',') => {
                    self.cur.bump();
                }
                Some('}') => {
                    self.cur.bump();
                    return Ok(object);
                }
                None => {
                    let (l, c) = self.cur.position();
                    return Err(error(l, c, format!("unexpected end of input inside object started at line {line}: missing '}}'")));
                }
                Some(_) => return Err(self.unexpected("',' or '}'")),
            }
        }
    }

    /// Reads elements after the `[` at `line`:`col`, up to and including the `]`.
    fn array(&mut self, depth: usize, line: u32, col: u32) -> Result<Vec<Value>, HclError> {
        if depth > MAX_DEPTH {
            return Err(too_deep(line, col));
        }
        let mut elements = Vec::new();
        self.skip_ws();
        if self.cur.eat(']') {
            return Ok(elements);
        }
        loop {
            self.skip_ws();
            elements.push(self.value(depth)?);
            self.skip_ws();
            match self.cur.peek() {
                Some(',') => {
                    self.cur.bump();
                }
                Some(']') => {
                    self.cur.bump();
                    return Ok(elements);
                }
                None => {
                    let (l, c) = self.cur.position();
                    return Err(error(l, c, format!("unexpected end of input inside array started at line {line}: missing ']'")));
                }
                Some(_) => return Err(self.unexpected("',' or ']'")),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, HclError> {
        let (line, col) = self.cur.position();
        match self.cur.peek() {
            Some('{') => {
                self.cur.bump();
                Ok(Value::Object(self.object(depth + 1, line, col)?))
            }
            Some('[') => {
                self.cur.bump();
                Ok(Value::List(self.array(depth + 1, line, col)?))
            }
            Some('"') => Ok(Value::String(self.string()?)),
            Some('-' | '0'..='9') => self.number(),
            _ => {
                for (word, value) in [
                    ("true", Value::Bool(true)),
                    ("false", Value::Bool(false)),
                    // HCL1 turns JSON null into an empty string.
                    ("null", Value::String(String::new())),
                ] {
                    if self.cur.rest().starts_with(word) {
                        self.cur.advance(word.len());
                        return Ok(value);
                    }
                }
                Err(self.unexpected("a JSON value"))
            }
        }
    }

    /// Reads a JSON string, the cursor being on the opening quote.
    fn string(&mut self) -> Result<String, HclError> {
        let (line, col) = self.cur.position();
        self.cur.bump();
        let mut out = String::new();
        loop {
            let (esc_line, esc_col) = self.cur.position();
            match self.cur.bump() {
                None | Some('\n') => {
                    return Err(error(line, col, "unterminated string"));
                }
                Some('"') => return Ok(out),
                Some('\\') => {
                    let bad = |what: String| error(esc_line, esc_col, what);
                    let ch = match self.cur.bump() {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('/') => '/',
                        Some('b') => '\u{8}',
                        Some('f') => '\u{c}',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        Some('t') => '\t',
                        Some('u') => {
                            let high = self.hex4().ok_or_else(|| bad("'\\u' needs four hexadecimal digits".to_owned()))?;
                            let code = if (0xD800..0xDC00).contains(&high) {
                                // A UTF-16 surrogate pair spells one character beyond U+FFFF.
                                let low = if self.cur.rest().starts_with("\\u") {
                                    self.cur.advance(2);
                                    self.hex4()
                                } else {
                                    None
                                };
                                match low {
                                    Some(low) if (0xDC00..0xE000).contains(&low) => 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00),
                                    _ => return Err(bad("unpaired UTF-16 surrogate".to_owned())),
                                }
                            } else {
                                high
                            };
                            char::from_u32(code).ok_or_else(|| bad("unpaired UTF-16 surrogate".to_owned()))?
                        }
                        Some(other) => {
                            return Err(bad(format!("unknown escape sequence '\\{}' in string", other.escape_debug())));
                        }
                        None => return Err(error(line, col, "unterminated string")),
                    };
                    out.push(ch);
                }
                Some(c) if c < ' ' => {
                    return Err(error(
                        esc_line,
                        esc_col,
                        format!("control character '{}' must be escaped in a JSON string", c.escape_debug()),
                    ));
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let mut value: u32 = 0;
        for _ in 0..4 {
            let digit = self.cur.peek()?.to_digit(16)?;
            self.cur.bump();
            value = value * 16 + digit;
        }
        Some(value)
    }

    /// Reads a number with RFC 8259's grammar.
    fn number(&mut self) -> Result<Value, HclError> {
        let (line, col) = self.cur.position();
        let start = self.cur.pos;
        self.cur.eat('-');
        let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        if self.cur.eat('0') {
            // JSON forbids leading zeros, so "0" ends the integer part.
        } else if digit(self.cur.peek()) {
            while digit(self.cur.peek()) {
                self.cur.bump();
            }
        } else {
            return Err(self.unexpected("a digit"));
        }
        let mut is_float = false;
        if self.cur.eat('.') {
            is_float = true;
            if !digit(self.cur.peek()) {
                return Err(self.unexpected("a digit after '.'"));
            }
            while digit(self.cur.peek()) {
                self.cur.bump();
            }
        }
        if matches!(self.cur.peek(), Some('e' | 'E')) {
            is_float = true;
            self.cur.bump();
            if !self.cur.eat('+') {
                self.cur.eat('-');
            }
            if !digit(self.cur.peek()) {
                return Err(self.unexpected("a digit in the exponent"));
            }
            while digit(self.cur.peek()) {
                self.cur.bump();
            }
        }
        let text = self.cur.src.get(start..self.cur.pos).unwrap_or_default();
        let out_of_range = || error(line, col, format!("number {text} is out of range"));
        if is_float {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Value::Float(f)),
                _ => Err(out_of_range()),
            }
        } else {
            text.parse::<i64>().map(Value::Int).map_err(|_| out_of_range())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::too_many_lines)]
mod tests {
    use super::*;

    // ---- helpers -------------------------------------------------------------------------

    fn s(text: &str) -> Value {
        Value::String(text.to_owned())
    }

    fn ob(items: Vec<(&str, Value)>) -> Object {
        Object { items: items.into_iter().map(|(key, value)| Item { key: key.to_owned(), value, line: 0 }).collect() }
    }

    fn o(items: Vec<(&str, Value)>) -> Value {
        Value::Object(ob(items))
    }

    fn strs(items: &[&str]) -> Value {
        Value::List(items.iter().map(|x| s(x)).collect())
    }

    /// The tree with every line number set to 0, to compare structure only.
    fn zero_lines(object: &Object) -> Object {
        fn value(v: &Value) -> Value {
            match v {
                Value::Object(o) => Value::Object(zero_lines(o)),
                Value::List(l) => Value::List(l.iter().map(value).collect()),
                other => other.clone(),
            }
        }
        Object { items: object.items.iter().map(|i| Item { key: i.key.clone(), value: value(&i.value), line: 0 }).collect() }
    }

    fn parse_ok(text: &str) -> Object {
        match parse(text) {
            Ok(o) => o,
            Err(e) => panic!("parse failed for {text:?}: {e}"),
        }
    }

    fn shape(text: &str) -> Object {
        zero_lines(&parse_ok(text))
    }

    fn child<'a>(object: &'a Object, key: &str) -> &'a Object {
        let mut found = object.get_all(key);
        match (found.next(), found.next()) {
            (Some(Item { value: Value::Object(o), .. }), None) => o,
            other => panic!("expected exactly one object item {key:?}, got {other:?}"),
        }
    }

    // ---- a realistic server.conf -----------------------------------------------------------

    const SERVER_CONF: &str = r#"# SPIRE server configuration (example)
server {
    bind_address = "0.0.0.0"
    bind_port = "8081"
    socket_path = "/tmp/spire-server/private/api.sock"
    trust_domain = "example.org"
    data_dir = "./data/server"
    log_level = "DEBUG"
    ca_key_type = "ec-p256"
    ca_ttl = "168h"
    default_x509_svid_ttl = "1h"
    ca_subject = [{
        country = ["US"],
        organization = ["SPIFFE"],
        common_name = "",
    }]
    admin_ids = ["spiffe://example.org/admin"]

    federation {
        bundle_endpoint {
            address = "0.0.0.0"
            port = 8443
            refresh_hint = "5m"
            profile "https_spiffe" {}
        }
        federates_with "domain2.test" {
            bundle_endpoint_url = "https://5.6.7.8:8443"
            bundle_endpoint_profile "https_spiffe" {
                endpoint_spiffe_id = "spiffe://domain2.test/spire/server"
            }
        }
        federates_with "domain3.test" {
            bundle_endpoint_url = "https://9.9.9.9:8443"
            bundle_endpoint_profile "https_spiffe" {
                endpoint_spiffe_id = "spiffe://domain3.test/spire/server"
            }
        }
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./data/server/datastore.sqlite3"
        }
    }

    KeyManager "disk" {
        plugin_data {
            keys_path = "./data/server/keys.json"
        }
    }

    NodeAttestor "join_token" {
        plugin_data {}
    }

    NodeAttestor "x509pop" {
        plugin_data { ca_bundle_path = "/opt/spire/conf/root.crt" }
    }

    UpstreamAuthority "disk" {
        plugin_data {
            key_file_path = "./conf/server/dummy_upstream_ca.key"
            cert_file_path = "./conf/server/dummy_upstream_ca.crt"
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "0.0.0.0"
    bind_port = "8080"
    live_path = "/live"
    ready_path = "/ready"
}
"#;

    fn federates_with(td: &str, url: &str) -> (&'static str, Value) {
        (
            "federates_with",
            o(vec![(
                td,
                o(vec![
                    ("bundle_endpoint_url", s(url)),
                    (
                        "bundle_endpoint_profile",
                        o(vec![("https_spiffe", o(vec![("endpoint_spiffe_id", s(&format!("spiffe://{td}/spire/server")))]))]),
                    ),
                ]),
            )]),
        )
    }

    fn plugin(kind: &'static str, name: &str, data: Vec<(&str, Value)>) -> (&'static str, Value) {
        (kind, o(vec![(name, o(vec![("plugin_data", o(data))]))]))
    }

    #[test]
    fn full_server_conf_tree() {
        let expected = ob(vec![
            (
                "server",
                o(vec![
                    ("bind_address", s("0.0.0.0")),
                    ("bind_port", s("8081")),
                    ("socket_path", s("/tmp/spire-server/private/api.sock")),
                    ("trust_domain", s("example.org")),
                    ("data_dir", s("./data/server")),
                    ("log_level", s("DEBUG")),
                    ("ca_key_type", s("ec-p256")),
                    ("ca_ttl", s("168h")),
                    ("default_x509_svid_ttl", s("1h")),
                    (
                        "ca_subject",
                        Value::List(vec![o(vec![("country", strs(&["US"])), ("organization", strs(&["SPIFFE"])), ("common_name", s(""))])]),
                    ),
                    ("admin_ids", strs(&["spiffe://example.org/admin"])),
                    (
                        "federation",
                        o(vec![
                            (
                                "bundle_endpoint",
                                o(vec![
                                    ("address", s("0.0.0.0")),
                                    ("port", Value::Int(8443)),
                                    ("refresh_hint", s("5m")),
                                    ("profile", o(vec![("https_spiffe", o(vec![]))])),
                                ]),
                            ),
                            federates_with("domain2.test", "https://5.6.7.8:8443"),
                            federates_with("domain3.test", "https://9.9.9.9:8443"),
                        ]),
                    ),
                ]),
            ),
            (
                "plugins",
                o(vec![
                    plugin(
                        "DataStore",
                        "sql",
                        vec![("database_type", s("sqlite3")), ("connection_string", s("./data/server/datastore.sqlite3"))],
                    ),
                    plugin("KeyManager", "disk", vec![("keys_path", s("./data/server/keys.json"))]),
                    plugin("NodeAttestor", "join_token", vec![]),
                    plugin("NodeAttestor", "x509pop", vec![("ca_bundle_path", s("/opt/spire/conf/root.crt"))]),
                    plugin(
                        "UpstreamAuthority",
                        "disk",
                        vec![
                            ("key_file_path", s("./conf/server/dummy_upstream_ca.key")),
                            ("cert_file_path", s("./conf/server/dummy_upstream_ca.crt")),
                        ],
                    ),
                ]),
            ),
            (
                "health_checks",
                o(vec![
                    ("listener_enabled", Value::Bool(true)),
                    ("bind_address", s("0.0.0.0")),
                    ("bind_port", s("8080")),
                    ("live_path", s("/live")),
                    ("ready_path", s("/ready")),
                ]),
            ),
        ]);
        let parsed = parse_ok(SERVER_CONF);
        assert_eq!(zero_lines(&parsed), expected);

        // Line numbers point at keys and labels.
        let server = child(&parsed, "server");
        let federation = child(server, "federation");
        let lines: Vec<u32> = federation.get_all("federates_with").map(|i| i.line).collect();
        assert_eq!(lines, vec![26, 32]);
        let Value::Object(labelled) = &federation.get_all("federates_with").nth(1).unwrap().value else {
            panic!("labelled block is not an object");
        };
        assert_eq!(labelled.items[0].key, "domain3.test");
        assert_eq!(labelled.items[0].line, 32);
        assert_eq!(parsed.items[0].line, 2);
        assert_eq!(parsed.items[2].line, 71);
        let plugins = child(&parsed, "plugins");
        let attestors: Vec<&str> = plugins
            .get_all("NodeAttestor")
            .map(|i| match &i.value {
                Value::Object(o) => o.items[0].key.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(attestors, vec!["join_token", "x509pop"]);
        assert_eq!(plugins.get_all("Missing").count(), 0);
    }

    /// Any prefix or single-character corruption of a real config must give Ok or Err, never
    /// a panic.
    #[test]
    fn truncated_and_corrupted_input_never_panics() {
        let json = r#"{"server": {"a": [1, -2.5e3, "x\u00e9", true, null, {"b": {}}]}}"#;
        for text in [SERVER_CONF, json] {
            for (i, _) in text.char_indices() {
                let _ = parse(&text[..i]);
                let _ = parse_json(&text[..i]);
            }
            for (i, c) in text.char_indices().step_by(3) {
                for bad in ['{', '}', '[', ']', '"', '=', ',', '<', '#', '/', '\\', '$', '\n', '-'] {
                    let mut mutated = String::with_capacity(text.len());
                    mutated.push_str(&text[..i]);
                    mutated.push(bad);
                    mutated.push_str(&text[i + c.len_utf8()..]);
                    let _ = parse(&mutated);
                    let _ = parse_json(&mutated);
                }
            }
        }
    }

    // ---- HCL1-only forms ------------------------------------------------------------------

    #[test]
    fn hcl1_only_forms() {
        let cases: Vec<(&str, Object)> = vec![
            (
                "agent {\n  server_address = \"x\",\n  server_port = \"8081\",\n}\n",
                ob(vec![("agent", o(vec![("server_address", s("x")), ("server_port", s("8081"))]))]),
            ),
            (
                "plugin_data { key_file_path = \"a\" cert_file_path = \"b\" }",
                ob(vec![("plugin_data", o(vec![("key_file_path", s("a")), ("cert_file_path", s("b"))]))]),
            ),
            (
                "address = \"0.0.0.0\"   port = 8443   refresh_hint = \"5m\"",
                ob(vec![("address", s("0.0.0.0")), ("port", Value::Int(8443)), ("refresh_hint", s("5m"))]),
            ),
            (
                "ca_subject = {\n  country = [\"US\"]\n  organization = [\"SPIFFE\"]\n}",
                ob(vec![("ca_subject", o(vec![("country", strs(&["US"])), ("organization", strs(&["SPIFFE"]))]))]),
            ),
            (
                "KeyManager \"memory\" { plugin_data = {} }",
                ob(vec![("KeyManager", o(vec![("memory", o(vec![("plugin_data", o(vec![]))]))]))]),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(shape(text), expected, "input: {text:?}");
        }
    }

    #[test]
    fn block_forms_are_equivalent() {
        let block = shape("a { b = 1 }");
        assert_eq!(block, shape("a = { b = 1 }"));
        assert_eq!(block, ob(vec![("a", o(vec![("b", Value::Int(1))]))]));
        // Quoted and bare labels, one and two of them.
        let two = ob(vec![("k", o(vec![("l1", o(vec![("l2", o(vec![("x", Value::Int(1))]))]))]))]);
        assert_eq!(shape("k \"l1\" \"l2\" { x = 1 }"), two);
        assert_eq!(shape("k l1 l2 { x = 1 }"), two);
        assert_eq!(shape("\"k\" \"l1\" l2 {\n x = 1\n}"), two);
    }

    #[test]
    fn repeated_keys_accumulate_in_order() {
        let parsed = parse_ok("a = 1\nb = 2\na = 3\nx \"p\" {}\nx \"p\" { y = true }\n");
        let a: Vec<&Value> = parsed.get_all("a").map(|i| &i.value).collect();
        assert_eq!(a, vec![&Value::Int(1), &Value::Int(3)]);
        assert_eq!(parsed.get_all("a").map(|i| i.line).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(parsed.get_all("x").count(), 2);
        assert_eq!(parsed.items.len(), 5);
    }

    // ---- values ---------------------------------------------------------------------------

    #[test]
    fn scalar_values() {
        let cases: Vec<(&str, Value)> = vec![
            ("v = 42", Value::Int(42)),
            ("v = -17", Value::Int(-17)),
            ("v = 0", Value::Int(0)),
            ("v = -0", Value::Int(0)),
            ("v = 0x1F", Value::Int(31)),
            ("v = -0x10", Value::Int(-16)),
            ("v = 010", Value::Int(8)),
            ("v = 9223372036854775807", Value::Int(i64::MAX)),
            ("v = -9223372036854775808", Value::Int(i64::MIN)),
            ("v = 1.5", Value::Float(1.5)),
            ("v = -0.25", Value::Float(-0.25)),
            ("v = 1e3", Value::Float(1000.0)),
            ("v = 2.5E-1", Value::Float(0.25)),
            ("v = 0.5", Value::Float(0.5)),
            ("v = true", Value::Bool(true)),
            ("v = false", Value::Bool(false)),
            ("v = \"8081\"", s("8081")),
            ("v = \"\"", s("")),
            ("v = \"tab\\there\"", s("tab\there")),
            (r#"v = "q\"uote \\ back""#, s("q\"uote \\ back")),
            (r#"v = "a\nb\rc""#, s("a\nb\rc")),
            (r#"v = "\u00e9\U0001F600\x41\101""#, s("\u{e9}\u{1F600}AA")),
            (r#"v = "bell\a\b\f\v""#, s("bell\u{7}\u{8}\u{c}\u{b}")),
            ("v = \"unicode é ✓\"", s("unicode é ✓")),
            ("v = \"${UPSTREAM_ADDR}\"", s("${UPSTREAM_ADDR}")),
            (r#"v = "pre ${lookup("a", "b\n")} post\n""#, s("pre ${lookup(\"a\", \"b\\n\")} post\n")),
            ("v = \"# not a comment // nor this\"", s("# not a comment // nor this")),
        ];
        for (text, expected) in cases {
            assert_eq!(shape(text), ob(vec![("v", expected)]), "input: {text:?}");
        }
    }

    #[test]
    fn ports_as_strings_and_numbers() {
        let parsed = shape("bind_port = \"8081\"\nport = 8443\n");
        assert_eq!(parsed, ob(vec![("bind_port", s("8081")), ("port", Value::Int(8443))]));
    }

    #[test]
    fn lists() {
        let cases: Vec<(&str, Value)> = vec![
            ("v = []", Value::List(vec![])),
            ("v = [1, 2, 3]", Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)])),
            ("v = [\"a\", \"b\",]", strs(&["a", "b"])),
            ("v = [\n  \"a\",\n  \"b\",\n]", strs(&["a", "b"])),
            ("v = [\n  # comment\n  \"a\", // another\n  /* third */ \"b\"\n]", strs(&["a", "b"])),
            (
                "v = [[1], [], [\"x\", true]]",
                Value::List(vec![Value::List(vec![Value::Int(1)]), Value::List(vec![]), Value::List(vec![s("x"), Value::Bool(true)])]),
            ),
            (
                "v = [{ a = 1 }, { b = \"x\" c = [] },]",
                Value::List(vec![o(vec![("a", Value::Int(1))]), o(vec![("b", s("x")), ("c", Value::List(vec![]))])]),
            ),
            ("v = [1.5, -2]", Value::List(vec![Value::Float(1.5), Value::Int(-2)])),
        ];
        for (text, expected) in cases {
            assert_eq!(shape(text), ob(vec![("v", expected)]), "input: {text:?}");
        }
    }

    #[test]
    fn heredocs() {
        let cases: Vec<(&str, &str)> = vec![
            ("v = <<EOF\nline one\n  line two\nEOF\n", "line one\n  line two\n"),
            ("v = <<EOF\nEOF", ""),
            // A CRLF file gives the same value as an LF file.
            ("v = <<EOF\r\na\r\nb\r\nEOF\r\n", "a\nb\n"),
            // Ends at end of input, without a final newline.
            ("v = <<END_PEM\n-----BEGIN-----\nEND_PEM", "-----BEGIN-----\n"),
            // <<- removes the closing line's indentation from every line.
            ("  v = <<-EOT\n    first\n      indented\n    last\n    EOT\n", "first\n  indented\nlast\n"),
            // HCL1 strips the closing line's indentation, not the common indentation.
            ("v = <<-EOT\n      deep\n      deeper\n    EOT\n", "  deep\n  deeper\n"),
            // A line less indented than the closing line turns stripping off.
            ("v = <<-EOT\n    a\n  b\n    EOT\n", "    a\n  b\n"),
            // Blank lines do not turn it off.
            ("v = <<-EOT\n    a\n\n    b\n    EOT\n", "a\n\nb\n"),
            // Plain << keeps indentation and accepts an indented closing line.
            ("v = <<EOT\n    a\n    EOT\n", "    a\n"),
            // A line merely containing the anchor does not close it.
            ("v = <<EOF\nnot EOF\nEOFX\nEOF\n", "not EOF\nEOFX\n"),
        ];
        for (text, expected) in cases {
            assert_eq!(shape(text), ob(vec![("v", s(expected))]), "input: {text:?}");
        }
        // The item after a heredoc is read normally, with the right line.
        let parsed = parse_ok("a = <<EOF\nx\nEOF\nb = 2\n");
        assert_eq!(parsed.items[1].key, "b");
        assert_eq!(parsed.items[1].line, 4);
        assert_eq!(parsed.items[1].value, Value::Int(2));
    }

    #[test]
    fn comments_of_all_kinds() {
        let text = "# hash comment\n\
                    a = 1 # trailing hash\n\
                    // slash comment\n\
                    b = 2 // trailing slash\n\
                    /* block\n   comment spanning lines */ c = 3\n\
                    d /* inline */ = /* here too */ 4\n\
                    /**/e = 5 /* ** */\n";
        assert_eq!(
            shape(text),
            ob(vec![("a", Value::Int(1)), ("b", Value::Int(2)), ("c", Value::Int(3)), ("d", Value::Int(4)), ("e", Value::Int(5)),])
        );
        let parsed = parse_ok(text);
        assert_eq!(parsed.items[2].line, 6);
    }

    #[test]
    fn keys() {
        let parsed = shape("\"quoted key\" = 1\n\"with \\\"escape\\\"\" = 2\nbare-key.with_dots-1 = 3\nünï = 4\n_x = 5");
        assert_eq!(
            parsed,
            ob(vec![
                ("quoted key", Value::Int(1)),
                ("with \"escape\"", Value::Int(2)),
                ("bare-key.with_dots-1", Value::Int(3)),
                ("ünï", Value::Int(4)),
                ("_x", Value::Int(5)),
            ])
        );
    }

    #[test]
    fn empty_and_trivial_inputs() {
        for text in ["", "   \n\t\r\n", "# only a comment", "/* block */", "\u{feff}"] {
            assert_eq!(parse(text), Ok(Object::default()), "input: {text:?}");
        }
        assert_eq!(shape("\u{feff}a = 1"), ob(vec![("a", Value::Int(1))]));
    }

    // ---- errors ---------------------------------------------------------------------------

    #[test]
    fn errors_name_line_column_and_expectation() {
        let deep_list = format!("a = {}", "[".repeat(10_000));
        let deep_object = format!("a = {}", "{ b = ".repeat(10_000));
        let deep_blocks = "b {\n".repeat(10_000);
        let many_labels = format!("a {} {{}}", "\"l\" ".repeat(10_000));
        let cases: Vec<(&str, u32, u32, &str)> = vec![
            ("a = \"abc", 1, 5, "unterminated string"),
            ("a = \"abc\nb = 1", 1, 5, "unterminated string"),
            ("k = \"${x\"", 1, 5, "unterminated string"),
            ("\"key", 1, 1, "unterminated string"),
            ("x = 1\n\nserver {\n  a = 1\n", 5, 1, "unexpected end of input inside block \"server\" started at line 3: missing '}'"),
            ("a {\n b {\n }\n", 4, 1, "inside block \"a\" started at line 1"),
            ("x = {\n", 2, 1, "inside object \"x\" started at line 1"),
            ("a = [1, 2", 1, 10, "inside list started at line 1: missing ']'"),
            ("a = [1,\n", 2, 1, "inside list started at line 1"),
            ("key = ", 1, 7, "expected a value for key \"key\", found end of input"),
            ("key =\nother = 1", 2, 1, "expected a value for key \"key\", found identifier \"other\""),
            ("a = 1\n}\n", 2, 1, "unexpected '}': no block is open here"),
            ("server\n", 2, 1, "expected '=' or '{' after key \"server\", found end of input"),
            ("server [", 1, 8, "expected '=' or '{' after key \"server\", found '['"),
            ("a = 1\n@@@", 2, 1, "unexpected character '@'"),
            ("\u{0}", 1, 1, "unexpected character '\\0'"),
            ("a { \u{7f} }", 1, 5, "unexpected character '\\u{7f}'"),
            ("ünï = @", 1, 7, "unexpected character '@'"),
            ("a: 1", 1, 2, "HCL assigns with '='"),
            ("a = 'x'", 1, 5, "double quotes"),
            ("log_level = DEBUG", 1, 13, "found identifier \"DEBUG\" (strings must be quoted)"),
            ("ttl = 10s", 1, 9, "durations must be quoted"),
            ("v = 1.2.3", 1, 8, "after a number"),
            ("v = 1e", 1, 7, "exponent"),
            ("v = -x", 1, 5, "expected a digit after '-'"),
            ("v = 0x", 1, 5, "hexadecimal digits"),
            ("v = 09", 1, 5, "invalid octal number 09"),
            ("v = 99999999999999999999", 1, 5, "out of range"),
            ("v = 1e999", 1, 5, "out of range"),
            ("a = [1 2]", 1, 8, "expected ',' or ']' after a list element"),
            ("a = [1,,2]", 1, 8, "expected a list element, found ','"),
            ("a = [,]", 1, 6, "expected a list element, found ','"),
            ("a = 1,, b = 2", 1, 7, "expected a key, found ','"),
            (", a = 1", 1, 1, "expected a key, found ','"),
            ("a = 1 = 2", 1, 7, "expected a key, found '='"),
            ("a \"b\" = 1", 1, 7, "expected '{' after block \"a\" (line 1, column 1) and its labels \"b\""),
            ("/* never closed", 1, 1, "unterminated comment"),
            ("a = 1 / 2", 1, 7, "unexpected character '/'"),
            ("x = <<EOF\nabc\n", 1, 5, "unterminated heredoc: no line \"EOF\""),
            ("x = <<\nEOF\n", 1, 5, "anchor name"),
            ("x = <<EOF junk\nEOF\n", 1, 11, "line break after heredoc anchor"),
            ("x = <EOF", 1, 5, "heredoc starts with '<<'"),
            ("x = \"\\q\"", 1, 6, "unknown escape sequence '\\q'"),
            ("x = \"\\u12\"", 1, 6, "needs 4 digits"),
            ("x = \"\\xff\"", 1, 6, "above 0x7f"),
            ("x = \"\\uD800\"", 1, 6, "not a Unicode character"),
            ("x = \"\\U00110000\"", 1, 6, "not a Unicode character"),
            (&deep_list, 1, 69, "nesting too deep"),
            (&deep_object, 1, 65 * 6 - 1, "nesting too deep"),
            (&deep_blocks, 65, 3, "nesting too deep"),
            (&many_labels, 1, 3 + 63 * 4, "nesting too deep"),
        ];
        for (text, line, column, needle) in cases {
            let shown: String = text.chars().take(60).collect();
            let err = match parse(text) {
                Ok(tree) => panic!("expected an error for {shown:?}, got {tree:?}"),
                Err(e) => e,
            };
            assert!(err.message.contains(needle), "input {shown:?}: message {:?} lacks {needle:?}", err.message);
            assert_eq!((err.line, err.column), (line, column), "input {shown:?}: {err}");
        }
    }

    #[test]
    fn error_display_format() {
        let err = parse("a = 1\n}").unwrap_err();
        assert_eq!(err.to_string(), "line 2, column 1: unexpected '}': no block is open here");
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        // 64 levels: the top-level object holds a, which nests 63 more objects.
        let text = format!("{}{}", "a { ".repeat(64), "}".repeat(64));
        assert!(parse(&text).is_ok());
        let text = format!("{}{}", "a { ".repeat(65), "}".repeat(65));
        assert!(parse(&text).is_err());
        let list = format!("a = {}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse(&list).is_ok());
        let list = format!("a = {}{}", "[".repeat(65), "]".repeat(65));
        assert!(parse(&list).is_err());
        let json = format!("{{\"a\": {}{}}}", "[".repeat(64), "]".repeat(64));
        assert!(parse_json(&json).is_ok());
        let json = format!("{{\"a\": {}{}}}", "[".repeat(65), "]".repeat(65));
        assert!(parse_json(&json).is_err());
        let labels = format!("a {} {{}}", "l ".repeat(63));
        assert!(parse(&labels).is_ok());
        let labels = format!("a {} {{}}", "l ".repeat(64));
        assert!(parse(&labels).is_err());
    }

    // ---- expand_env -----------------------------------------------------------------------

    #[test]
    fn expand_env_cases() {
        let lookup = |name: &str| match name {
            "A" => Some("x".to_owned()),
            "A_B" => Some("ab".to_owned()),
            "HOST" => Some("10.0.0.1".to_owned()),
            "A B" => Some("spaced".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let cases = [
            ("$A", "x"),
            ("${A}", "x"),
            ("pre${A}post", "prexpost"),
            ("$A$A", "xx"),
            ("$A_B-c", "ab-c"),
            ("$MISSING", ""),
            ("[${MISSING}]", "[]"),
            ("${EMPTY}|", "|"),
            ("${A B}", "spaced"),
            ("é$Aé", "éxé"),
            ("server_address = \"${HOST}\"", "server_address = \"10.0.0.1\""),
            // `$` not followed by a name or `{` stays literal.
            ("$$", "$$"),
            ("$$A", "$x"),
            ("a$", "a$"),
            ("cost $5", "cost $5"),
            ("$ {A}", "$ {A}"),
            ("$-", "$-"),
            ("$é", "$é"),
            // Go drops `${}` and an unclosed `${`.
            ("a${}b", "ab"),
            ("a${A", "aA"),
            ("no dollars", "no dollars"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(expand_env(input, lookup), expected, "input: {input:?}");
        }
    }

    #[test]
    fn expand_env_then_parse() {
        let text = expand_env("agent { server_address = \"$ADDR\" port = ${PORT} }", |n| match n {
            "ADDR" => Some("spire-server".to_owned()),
            "PORT" => Some("8081".to_owned()),
            _ => None,
        });
        assert_eq!(shape(&text), ob(vec![("agent", o(vec![("server_address", s("spire-server")), ("port", Value::Int(8081))]))]));
    }

    // ---- JSON -----------------------------------------------------------------------------

    const SMALL_HCL: &str = r#"
server {
    trust_domain = "example.org"
    bind_port = "8081"
    ca_subject = [{ country = ["US"], organization = ["SPIFFE"] }]
    ratio = 0.5
}
plugins {
    NodeAttestor "join_token" { plugin_data {} }
    NodeAttestor "x509pop" { plugin_data { ca_bundle_path = "root.crt" } }
    KeyManager "disk" { plugin_data = { keys_path = "keys.json" } }
}
health_checks { listener_enabled = true, port = -1 }
"#;

    const SMALL_JSON: &str = r#"{
  "server": {
    "trust_domain": "example.org",
    "bind_port": "8081",
    "ca_subject": [{"country": ["US"], "organization": ["SPIFFE"]}],
    "ratio": 5e-1
  },
  "plugins": {
    "NodeAttestor": {"join_token": {"plugin_data": {}}},
    "NodeAttestor": {"x509pop": {"plugin_data": {"ca_bundle_path": "root.crt"}}},
    "KeyManager": {"disk": {"plugin_data": {"keys_path": "keys.json"}}}
  },
  "health_checks": {"listener_enabled": true, "port": -1}
}"#;

    #[test]
    fn json_matches_hcl() {
        let json = parse_json(SMALL_JSON).unwrap();
        assert_eq!(zero_lines(&json), shape(SMALL_HCL));
        // Key lines and order are kept; duplicates accumulate.
        assert_eq!(json.items.iter().map(|i| i.line).collect::<Vec<_>>(), vec![2, 8, 13]);
        let plugins = child(&json, "plugins");
        assert_eq!(plugins.get_all("NodeAttestor").count(), 2);
        assert_eq!(plugins.items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), vec!["NodeAttestor", "NodeAttestor", "KeyManager"]);
        // parse() hands a file that starts with '{' to the JSON reader, as HCL1 does.
        assert_eq!(parse(SMALL_JSON), Ok(json));
    }

    #[test]
    fn json_values() {
        let cases: Vec<(&str, Value)> = vec![
            (r#"{"v": 0}"#, Value::Int(0)),
            (r#"{"v": -12}"#, Value::Int(-12)),
            (r#"{"v": 1.25}"#, Value::Float(1.25)),
            (r#"{"v": 1E2}"#, Value::Float(100.0)),
            (r#"{"v": null}"#, s("")),
            (r#"{"v": false}"#, Value::Bool(false)),
            (r#"{"v": "a\"b\\c\/d\n\t\u00e9\ud83d\ude00"}"#, s("a\"b\\c/d\n\t\u{e9}\u{1F600}")),
            (r#"{"v": "${KEPT}"}"#, s("${KEPT}")),
            (r#"{"v": [1, [], {}, "x"]}"#, Value::List(vec![Value::Int(1), Value::List(vec![]), o(vec![]), s("x")])),
        ];
        for (text, expected) in cases {
            assert_eq!(zero_lines(&parse_json(text).unwrap()), ob(vec![("v", expected)]), "input: {text}");
        }
        assert_eq!(parse_json(" {} "), Ok(Object::default()));
    }

    #[test]
    fn json_errors() {
        let deep = format!("{{\"a\": {}", "[".repeat(10_000));
        let cases: Vec<(&str, u32, u32, &str)> = vec![
            ("", 1, 1, "found end of input"),
            ("[1]", 1, 1, "top level must be an object"),
            ("{\"a\": 1,}", 1, 9, "expected a quoted key, found character '}'"),
            ("{\"a\" 1}", 1, 6, "expected ':' after key \"a\""),
            ("{\"a\": tru}", 1, 7, "expected a JSON value"),
            ("{\"a\": 01}", 1, 8, "expected ',' or '}'"),
            ("{\"a\": 1.}", 1, 9, "a digit after '.'"),
            ("{\"a\": \"x}", 1, 7, "unterminated string"),
            ("{\"a\": \"x\ny\"}", 1, 7, "unterminated string"),
            ("{\"a\": \"\t\"}", 1, 8, "control character"),
            ("{\"a\": \"\\ud800\"}", 1, 8, "unpaired UTF-16 surrogate"),
            ("{\"a\": \"\\x41\"}", 1, 8, "unknown escape"),
            ("{\"a\": 1} x", 1, 10, "after the top-level JSON object"),
            ("{\"a\": 1\n", 2, 1, "inside object started at line 1"),
            ("{\"a\": [1 2]}", 1, 10, "expected ',' or ']'"),
            ("{\"a\": 99999999999999999999}", 1, 7, "out of range"),
            (&deep, 1, 71, "nesting too deep"),
        ];
        for (text, line, column, needle) in cases {
            let shown: String = text.chars().take(60).collect();
            let err = parse_json(text).expect_err(&shown);
            assert!(err.message.contains(needle), "input {shown:?}: {:?} lacks {needle:?}", err.message);
            assert_eq!((err.line, err.column), (line, column), "input {shown:?}: {err}");
        }
    }
}
