//! Stripe's Search Query Language, as far as a client settling its
//! operations needs it, read the way Stripe documents it:
//!
//! - a clause is a field, an operator and a value: `email:'amy@example.com'`,
//!   `metadata['order_id']:'42'` (or with double quotes), `amount>1000`;
//! - operators: `:` exact match, `~` substring, `>`, `>=`, `<`, `<=` on
//!   numbers; `-` before a clause negates it; the value `null` matches a
//!   missing or empty field;
//! - string values must be quoted (`'` or `"`, a backslash escapes a quote);
//!   numbers may be bare;
//! - up to 10 clauses, joined by spaces or `AND` (the default) or by `OR`
//!   (either case), never both in one query; no parentheses;
//! - only the resource's query fields may be used; any other is a 400.
//!
//! Matching is exact and case-sensitive, except `~`, which ignores case.

use serde_json::Value;

/// A parsed query.
#[derive(Debug)]
pub struct Query {
    clauses: Vec<Clause>,
    /// Clauses joined by `OR` rather than `AND`.
    any: bool,
}

#[derive(Debug)]
struct Clause {
    negated: bool,
    field: Field,
    op: Op,
    value: Term,
}

#[derive(Debug)]
enum Field {
    /// A field of the object, dotted for nested ones.
    Plain(String),
    /// `metadata['key']`.
    Metadata(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Exact,
    Substring,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug)]
enum Term {
    Text(String),
    Number(i64),
    Null,
}

/// How many clauses a query may have.
const MAX_CLAUSES: usize = 10;

impl Query {
    /// Parses `query` for a resource whose query fields are `fields`; the
    /// error is the message of Stripe's 400.
    pub fn parse(query: &str, resource: &str, fields: &[&str]) -> Result<Self, String> {
        let mut p = Parser { rest: query.trim() };
        let mut clauses = Vec::new();
        let mut joiner: Option<bool> = None;
        loop {
            let clause = p.clause()?;
            let name = match &clause.field {
                Field::Plain(f) => f.as_str(),
                Field::Metadata(_) => "metadata",
            };
            if !fields.contains(&name) {
                return Err(format!(
                    "Field `{name}` is an unsupported search field for resource `{resource}`. See https://stripe.com/docs/search#query-fields-for-{} for a list of supported fields.",
                    resource.replace('_', "-")
                ));
            }
            clauses.push(clause);
            if clauses.len() > MAX_CLAUSES {
                return Err(format!("A search query may combine at most {MAX_CLAUSES} clauses."));
            }
            if p.rest.is_empty() {
                break;
            }
            let or = p.joiner()?;
            if joiner.is_some_and(|j| j != or) {
                return Err("A search query cannot combine AND and OR.".into());
            }
            joiner = Some(or);
        }
        Ok(Self { clauses, any: joiner == Some(true) })
    }

    /// Whether `object` matches.
    pub fn matches(&self, object: &Value) -> bool {
        let mut results = self.clauses.iter().map(|c| c.matches(object));
        if self.any { results.any(|m| m) } else { results.all(|m| m) }
    }
}

impl Clause {
    fn matches(&self, object: &Value) -> bool {
        let found = match &self.field {
            Field::Metadata(key) => object.get("metadata").and_then(|m| m.get(key)),
            Field::Plain(path) => path.split('.').try_fold(object, |v, part| v.get(part)),
        };
        let found = found.filter(|v| !v.is_null() && v.as_str() != Some(""));
        let hit = match (&self.value, found) {
            (Term::Null, found) => found.is_none(),
            (_, None) => false,
            (Term::Text(want), Some(have)) => match (self.op, have) {
                (Op::Exact, Value::String(s)) => s == want,
                (Op::Exact, Value::Bool(b)) => b.to_string() == *want,
                (Op::Exact, Value::Number(n)) => n.to_string() == *want,
                (Op::Substring, Value::String(s)) => s.to_lowercase().contains(&want.to_lowercase()),
                _ => false,
            },
            (Term::Number(want), Some(have)) => {
                let have = have.as_i64().or_else(|| have.as_str().and_then(|s| s.parse().ok()));
                have.is_some_and(|h| match self.op {
                    Op::Exact => h == *want,
                    Op::Gt => h > *want,
                    Op::Ge => h >= *want,
                    Op::Lt => h < *want,
                    Op::Le => h <= *want,
                    Op::Substring => h.to_string().contains(&want.to_string()),
                })
            }
        };
        hit != self.negated
    }
}

/// A cursor over the text of a query.
struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn clause(&mut self) -> Result<Clause, String> {
        let negated = self.eat("-");
        let name_len =
            self.rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(self.rest.len());
        if name_len == 0 {
            return Err(format!("Invalid search query: expected a field at `{}`.", self.rest));
        }
        let name = self.rest[..name_len].to_string();
        self.rest = &self.rest[name_len..];
        let field = if name == "metadata" {
            if !self.eat("[") {
                return Err("Invalid search query: metadata must name a key, as in metadata['key'].".into());
            }
            let key = self.quoted()?;
            if !self.eat("]") {
                return Err("Invalid search query: expected `]` after the metadata key.".into());
            }
            Field::Metadata(key)
        } else {
            Field::Plain(name)
        };
        let op = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt), (":", Op::Exact), ("~", Op::Substring)]
            .into_iter()
            .find(|(text, _)| self.eat(text))
            .map(|(_, op)| op)
            .ok_or_else(|| format!("Invalid search query: expected an operator at `{}`.", self.rest))?;
        let value = if self.rest.starts_with(['\'', '"']) {
            let text = self.quoted()?;
            match op {
                Op::Exact | Op::Substring => Term::Text(text),
                _ => Term::Number(text.parse().map_err(|_| format!("`{text}` is not a number."))?),
            }
        } else {
            let len = self.rest.find(char::is_whitespace).unwrap_or(self.rest.len());
            let bare = &self.rest[..len];
            self.rest = &self.rest[len..];
            if bare.eq_ignore_ascii_case("null") {
                Term::Null
            } else {
                Term::Number(bare.parse().map_err(|_| {
                    format!("Invalid search query: string values must be quoted, as in field:'{bare}'.")
                })?)
            }
        };
        Ok(Clause { negated, field, op, value })
    }

    /// A `'...'` or `"..."` string, with `\` escaping the next character.
    fn quoted(&mut self) -> Result<String, String> {
        let mut chars = self.rest.char_indices();
        let Some((_, quote)) = chars.next().filter(|(_, c)| *c == '\'' || *c == '"') else {
            return Err(format!("Invalid search query: expected a quoted value at `{}`.", self.rest));
        };
        let mut out = String::new();
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                out.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == quote {
                self.rest = &self.rest[i + c.len_utf8()..];
                return Ok(out);
            } else {
                out.push(c);
            }
        }
        Err("Invalid search query: a quoted value is not closed.".into())
    }

    /// The joiner after a clause: `true` for `OR`, `false` for `AND` or a
    /// plain space.
    fn joiner(&mut self) -> Result<bool, String> {
        let before = self.rest;
        self.rest = self.rest.trim_start();
        if self.rest.len() == before.len() {
            return Err(format!("Invalid search query: expected a space at `{}`.", self.rest));
        }
        for (word, or) in [("AND", false), ("OR", true)] {
            let head = self.rest.get(..word.len());
            let spaced = self.rest.get(word.len()..).is_some_and(|r| r.starts_with(char::is_whitespace));
            if head.is_some_and(|h| h.eq_ignore_ascii_case(word)) && spaced {
                self.rest = self.rest[word.len()..].trim_start();
                return Ok(or);
            }
        }
        Ok(false)
    }

    fn eat(&mut self, token: &str) -> bool {
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[&str] = &["amount", "customer", "metadata", "status", "email"];

    fn hits(query: &str, object: &Value) -> bool {
        Query::parse(query, "payment_intents", FIELDS).unwrap().matches(object)
    }

    #[test]
    fn metadata_and_customer_clauses_joined_by_and_must_all_match() {
        let pi = json!({"customer": "cus_1", "metadata": {"paymentID": "7", "kind": "x"}});
        assert!(hits("metadata['paymentID']:'7' AND customer:'cus_1'", &pi));
        assert!(hits(r#"metadata["paymentID"]:"7" customer:"cus_1""#, &pi));
        assert!(!hits("metadata['paymentID']:'7' AND customer:'cus_2'", &pi));
        assert!(!hits("metadata['paymentID']:'70'", &pi));
    }

    #[test]
    fn or_negation_numbers_null_and_substrings_work_as_documented() {
        let pi = json!({"amount": 2000, "status": "succeeded", "email": "Ada@Example.com", "metadata": {}});
        assert!(hits("status:'canceled' or amount:2000", &pi));
        assert!(hits("-status:'canceled'", &pi));
        assert!(hits("amount>1999 AND amount<=2000", &pi));
        assert!(hits("metadata['missing']:null", &pi));
        assert!(hits("email~'example'", &pi));
        assert!(!hits("customer:'cus_1'", &pi));
    }

    #[test]
    fn malformed_queries_are_refused_with_a_reason() {
        for bad in [
            "colour:'red'",
            "status:succeeded",
            "status:'a' AND amount:1 OR amount:2",
            "metadata.x:'1'",
            "status:'open",
            "",
        ] {
            assert!(Query::parse(bad, "payment_intents", FIELDS).is_err(), "{bad}");
        }
        let eleven = ["amount:1"; 11].join(" AND ");
        assert!(Query::parse(&eleven, "payment_intents", FIELDS).is_err());
    }
}
