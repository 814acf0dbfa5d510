"""HTTP layer: parse JSON -> typed fields -> one service call -> JSON. No decisions here."""
