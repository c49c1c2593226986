"""Who a client is, what it may do, and the record of what it did."""
