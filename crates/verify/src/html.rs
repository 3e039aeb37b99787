//! Just enough HTML reading for Keycloak's login pages: forms (id, action, inputs), the page
//! title and the error message shown to the user. Not a general parser: Keycloak's themes
//! write well-formed, quoted attributes.

/// One `<form>`: its attributes and the named inputs inside it, values unescaped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Form {
    pub id: Option<String>,
    pub action: Option<String>,
    pub method: Option<String>,
    /// `(name, value)` of `<input>` (not unchecked checkboxes/radios), `<textarea>` and
    /// `<select>` (first selected option), in document order.
    pub fields: Vec<(String, String)>,
    /// Names of submit buttons with their values, e.g. `("submitAction", "updateProfile")`.
    pub buttons: Vec<(String, String)>,
}

/// Replaces the character references Keycloak's templates produce.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The attributes of a start tag, from just after its name to (not including) `>`.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        if start == i {
            break;
        }
        let name = tag[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let value = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                let mut j = vs;
                while j < b.len() && b[j] != q {
                    j += 1;
                }
                i = (j + 1).min(b.len());
                &tag[vs..j.min(b.len())]
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                &tag[vs..i]
            };
            out.push((name, unescape(value)));
        } else {
            out.push((name, String::new()));
        }
    }
    out
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A tag: lowercase name (`/name` for a closing tag), attributes, byte offset after the tag.
type Tag = (String, Vec<(String, String)>, usize);

/// The tags in `html`, in document order.
fn tags(html: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(i) = html[pos..].find('<') {
        let start = pos + i + 1;
        if html[start..].starts_with("!--") {
            pos = html[start..]
                .find("-->")
                .map_or(html.len(), |e| start + e + 3);
            continue;
        }
        let Some(end) = html[start..].find('>') else {
            break;
        };
        let inner = &html[start..start + end];
        pos = start + end + 1;
        // Closing tags are kept as `/name`.
        let skip = usize::from(inner.starts_with('/'));
        let name_end = inner[skip..]
            .find(|c: char| c.is_ascii_whitespace() || c == '/')
            .map_or(inner.len(), |e| e + skip);
        let name = inner[..name_end].to_ascii_lowercase();
        if name.len() == skip || name.starts_with('!') || name.starts_with('?') {
            continue;
        }
        let raw = name == "script" || name == "style";
        out.push((name.clone(), attributes(&inner[name_end..]), pos));
        // Skip the bodies of script and style elements.
        if raw {
            let close = format!("</{name}");
            if let Some(e) = html[pos..].to_ascii_lowercase().find(&close) {
                pos += e;
            }
        }
    }
    out
}

/// Every form in the page.
pub fn forms(html: &str) -> Vec<Form> {
    let mut out: Vec<Form> = Vec::new();
    let mut open = false;
    let all = tags(html);
    let mut i = 0;
    while i < all.len() {
        let (name, attrs, after) = &all[i];
        match name.as_str() {
            "form" => {
                out.push(Form {
                    id: attr(attrs, "id").map(str::to_string),
                    action: attr(attrs, "action").map(str::to_string),
                    method: attr(attrs, "method").map(str::to_ascii_lowercase),
                    ..Form::default()
                });
                open = true;
            }
            "/form" => open = false,
            "input" if open => {
                let form = out.last_mut().expect("open form");
                let kind = attr(attrs, "type").unwrap_or("text").to_ascii_lowercase();
                let Some(n) = attr(attrs, "name") else {
                    i += 1;
                    continue;
                };
                let value = attr(attrs, "value").unwrap_or("").to_string();
                match kind.as_str() {
                    "submit" | "button" | "image" | "reset" => {
                        form.buttons.push((n.to_string(), value));
                    }
                    "checkbox" | "radio" if attr(attrs, "checked").is_none() => {}
                    _ => form.fields.push((n.to_string(), value)),
                }
            }
            "button" if open => {
                let kind = attr(attrs, "type").unwrap_or("submit").to_ascii_lowercase();
                if kind == "submit"
                    && let Some(n) = attr(attrs, "name")
                {
                    let form = out.last_mut().expect("open form");
                    form.buttons.push((
                        n.to_string(),
                        attr(attrs, "value").unwrap_or("").to_string(),
                    ));
                }
            }
            "textarea" if open => {
                if let Some(n) = attr(attrs, "name") {
                    let body = &html[*after..];
                    let end = body.to_ascii_lowercase().find("</textarea").unwrap_or(0);
                    let form = out.last_mut().expect("open form");
                    form.fields.push((n.to_string(), unescape(&body[..end])));
                }
            }
            "select" if open => {
                if let Some(n) = attr(attrs, "name") {
                    let mut chosen = None;
                    let mut first = None;
                    let mut j = i + 1;
                    while j < all.len() && all[j].0 != "/select" {
                        if all[j].0 == "option" {
                            let v = attr(&all[j].1, "value").unwrap_or("").to_string();
                            first.get_or_insert_with(|| v.clone());
                            if attr(&all[j].1, "selected").is_some() {
                                chosen.get_or_insert(v);
                            }
                        }
                        j += 1;
                    }
                    if let Some(v) = chosen.or(first) {
                        let form = out.last_mut().expect("open form");
                        form.fields.push((n.to_string(), v));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The text of the page's `<title>`, whitespace collapsed.
pub fn title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let end = open_end + lower[open_end..].find("</title")?;
    let text = collapse(&unescape(&html[open_end..end]));
    (!text.is_empty()).then_some(text)
}

/// The text of the first element whose start tag has `marker` (e.g. `id="input-error"`),
/// tags stripped and whitespace collapsed.
fn text_after_marker(html: &str, marker: &str) -> Option<String> {
    let at = html.find(marker)?;
    let open_end = at + html[at..].find('>')? + 1;
    // Up to the first closing tag of a block that holds the message.
    let rest = &html[open_end..];
    let end = ["</span", "</div", "</p"]
        .iter()
        .filter_map(|c| rest.find(c))
        .min()
        .unwrap_or(rest.len().min(400));
    let text = collapse(&unescape(&strip_tags(&rest[..end])));
    (!text.is_empty()).then_some(text)
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The message a Keycloak page shows the user (a refused password, an expired page, an error
/// page), if it shows one.
pub fn feedback(html: &str) -> Option<String> {
    [
        "id=\"input-error\"",
        "id=\"input-error-username\"",
        "class=\"kc-feedback-text\"",
        "id=\"kc-error-message\"",
        "class=\"instruction\"",
        "pf-v5-c-alert__title",
        "pf-c-alert__title",
    ]
    .iter()
    .find_map(|m| text_after_marker(html, m))
    .map(|t| t.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: &str = r#"<!DOCTYPE html><html><head><title>Sign in to DIVE USA</title>
<script>var x = "<form id='fake'>";</script></head><body>
<form id="kc-form-login" class="form" onsubmit="login.disabled = true; return true;"
  action="http://127.0.0.1:1/realms/dive-usa/login-actions/authenticate?session_code=a&amp;execution=b&amp;client_id=federation-fra&amp;tab_id=c" method="post" novalidate="novalidate">
  <input tabindex="1" id="username" name="username" value="" type="text" autofocus autocomplete="username">
  <input id="password" name="password" type="password">
  <input type="checkbox" name="rememberMe">
  <input type="hidden" id="id-hidden-input" name="credentialId"/>
  <button class="b" name="login" id="kc-login" type="submit">Sign In</button>
</form>
<span id="input-error" class="pf-v5-c-helper-text__item-text" aria-live="polite">
   Invalid username or password.</span>
</body></html>"#;

    #[test]
    fn the_login_form_is_found_and_unescaped() {
        let forms = forms(LOGIN);
        assert_eq!(forms.len(), 1, "{forms:?}");
        let f = &forms[0];
        assert_eq!(f.id.as_deref(), Some("kc-form-login"));
        assert_eq!(
            f.action.as_deref(),
            Some(
                "http://127.0.0.1:1/realms/dive-usa/login-actions/authenticate?session_code=a&execution=b&client_id=federation-fra&tab_id=c"
            )
        );
        assert_eq!(f.method.as_deref(), Some("post"));
        let names: Vec<&str> = f.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["username", "password", "credentialId"]);
        assert_eq!(f.buttons, [("login".to_string(), String::new())]);
        assert_eq!(title(LOGIN).as_deref(), Some("Sign in to DIVE USA"));
        assert_eq!(
            feedback(LOGIN).as_deref(),
            Some("Invalid username or password.")
        );
    }

    #[test]
    fn entities_are_decoded() {
        assert_eq!(
            unescape("a&amp;b&lt;&#39;&#x27;&quot;&zz;&"),
            "a&b<''\"&zz;&"
        );
    }

    #[test]
    fn review_profile_form_keeps_prefilled_values() {
        let page = r#"<title>Update Account Information</title>
<form id="kc-idp-review-profile-form" action="/realms/dive-fra/login-actions/first-broker-login?x=1&amp;y=2" method="post">
<input type="text" id="email" name="email" value="a@b.c"/>
<select name="clearance"><option value="A">A</option><option value="SECRET" selected>S</option></select>
<textarea name="note">hi &amp; bye</textarea>
<input type="submit" value="Submit"/>
</form>"#;
        let f = &forms(page)[0];
        assert_eq!(
            f.fields,
            [
                ("email".to_string(), "a@b.c".to_string()),
                ("clearance".to_string(), "SECRET".to_string()),
                ("note".to_string(), "hi & bye".to_string()),
            ]
        );
        assert_eq!(title(page).as_deref(), Some("Update Account Information"));
    }
}
