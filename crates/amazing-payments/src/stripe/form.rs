//! Stripe's request encoding: `application/x-www-form-urlencoded` with
//! bracket nesting (`metadata[order_id]=42`, `expand[]=latest_charge`).

/// The parameters of one Stripe request, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key=value`.
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.0.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds `key=value` when there is a value.
    pub fn set_opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// Adds `parent[key]=value` for each entry, e.g. metadata.
    pub fn map<'a>(mut self, parent: &str, entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        for (k, v) in entries {
            self.0.push((format!("{parent}[{k}]"), v.to_string()));
        }
        self
    }

    /// Adds `parent[]=value` for each value, e.g. `expand[]`.
    pub fn list<'a>(mut self, parent: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        for v in values {
            self.0.push((format!("{parent}[]"), v.to_string()));
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The encoded body or query string.
    pub fn encode(&self) -> String {
        form_urlencoded::Serializer::new(String::new()).extend_pairs(self.0.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Form;

    #[test]
    fn nested_parameters_are_encoded_with_brackets() {
        let f = Form::new()
            .set("email", "a+b@example.com")
            .map("metadata", [("customerID", "42")])
            .list("expand", ["latest_charge"]);
        assert_eq!(f.encode(), "email=a%2Bb%40example.com&metadata%5BcustomerID%5D=42&expand%5B%5D=latest_charge");
    }
}
