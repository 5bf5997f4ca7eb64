//! Upcasters: pure functions that rewrite a stored payload of one schema version into the
//! next, and the Rust types of the older stored shapes (their JSON Schemas are generated
//! from them like the current ones). They are registered in [`crate::registry::UPCASTERS`].
//!
//! # OrderPlaced v0
//!
//! Version 0 of `OrderPlaced` is the order as placed, without the server-computed `total`.
//! No Chronicle build has written it: it is a legacy form that the golden fixtures carry so
//! that upcasting is exercised end to end (decode, aggregate replay, JSON Schema, the loud
//! failure of an upcaster), and it is the model for the first real version bump. The
//! upcaster derives `total` from the lines with the same checked arithmetic as
//! [`domain::order::validate_lines`]: a total outside `1..=10^15` stops replay.

use domain::order::OrderLine;
use domain::values::MAX_AMOUNT;
use domain::Currency;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// `OrderPlaced` version 0: the order as placed, without its total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderPlacedV0 {
    /// The order's id.
    pub order_id: Uuid,
    /// The buying account.
    pub buyer: Uuid,
    /// The selling account.
    pub seller: Uuid,
    /// The order's currency.
    pub currency: Currency,
    /// What is bought.
    pub lines: Vec<OrderLine>,
    /// Whether payment goes through an escrow.
    pub use_escrow: bool,
}

/// `OrderPlaced` v0 to v1: adds `total`, the sum of `quantity * unit_price` over the lines.
pub fn order_placed_v0_to_v1(payload: Value) -> Result<Value, String> {
    let v0: OrderPlacedV0 = serde_json::from_value(payload).map_err(|e| e.to_string())?;
    let mut total: i64 = 0;
    for (i, line) in v0.lines.iter().enumerate() {
        total = line
            .quantity
            .checked_mul(line.unit_price)
            .and_then(|amount| total.checked_add(amount))
            .filter(|t| (0..=MAX_AMOUNT).contains(t))
            .ok_or_else(|| format!("line {}: the total leaves 0..=10^15 minor units", i + 1))?;
    }
    if total < 1 {
        return Err("the total is not at least one minor unit".to_owned());
    }
    let mut v1 = serde_json::to_value(&v0).map_err(|e| e.to_string())?;
    if let Some(fields) = v1.as_object_mut() {
        fields.insert("total".to_owned(), Value::from(total));
    }
    Ok(v1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v0(lines: Value) -> Value {
        json!({
            "order_id": Uuid::nil(), "buyer": Uuid::nil(), "seller": Uuid::max(),
            "currency": "EUR", "lines": lines, "use_escrow": false
        })
    }

    #[test]
    fn the_total_is_the_sum_of_the_lines() {
        let up = order_placed_v0_to_v1(v0(json!([
            {"sku": "a", "description": "A", "quantity": 3, "unit_price": 250},
            {"sku": "b", "description": "B", "quantity": 1, "unit_price": 0},
            {"sku": "c", "description": "C", "quantity": 2, "unit_price": 1}
        ])))
        .expect("upcasts");
        assert_eq!(up["total"], 752);
        assert_eq!(up["currency"], "EUR");
        assert_eq!(up["lines"][0]["sku"], "a");
    }

    #[test]
    fn totals_out_of_range_and_foreign_shapes_are_refused() {
        let huge = order_placed_v0_to_v1(v0(json!([
            {"sku": "a", "description": "A", "quantity": 10_000, "unit_price": MAX_AMOUNT}
        ])));
        assert!(huge.is_err_and(|e| e.contains("line 1")));
        let free = order_placed_v0_to_v1(v0(json!([
            {"sku": "a", "description": "A", "quantity": 1, "unit_price": 0}
        ])));
        assert!(free.is_err());
        // A v1 payload is not a v0 one: it carries a total already.
        let mut v1 = v0(json!([{"sku": "a", "description": "A", "quantity": 1, "unit_price": 5}]));
        v1["total"] = json!(5);
        assert!(order_placed_v0_to_v1(v1).is_err());
    }
}
