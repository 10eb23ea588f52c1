//! Reading a service's Prometheus `/metrics` page, for tests and benchmarks.

use std::time::Duration;

/// How long reading a metrics page may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The `/metrics` page of the server on 127.0.0.1:`port`; `None` when it
/// cannot be read (not up yet, or gone).
pub fn metrics_page(port: u16) -> Option<String> {
    let response = crate::http::request(port, "GET", "/metrics", "", SCRAPE_TIMEOUT).ok()?;
    (response.status == 200).then_some(response.body)
}

/// The samples of metric `name` in a metrics `page`: each sample's label
/// part (`{a="b"}`, or empty) and its value, in page order.
pub fn metric_samples<'a>(page: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(move |line| {
            let (key, value) = line.rsplit_once(' ')?;
            let labels = key.strip_prefix(name)?;
            if !labels.is_empty() && !labels.starts_with('{') {
                return None;
            }
            Some((labels, value.parse().ok()?))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_one_name_with_their_labels() {
        let page = "# HELP x_total x\nx_total{a=\"1\"} 2\nx_total_other 5\nx_total{a=\"2\"} 3.5\ny 1\nx_total 7\n";
        let samples: Vec<_> = metric_samples(page, "x_total").collect();
        assert_eq!(
            samples,
            vec![("{a=\"1\"}", 2.0), ("{a=\"2\"}", 3.5), ("", 7.0)]
        );
    }
}
