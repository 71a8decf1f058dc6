CREATE TABLE orders (
    id BIGSERIAL PRIMARY KEY,
    description TEXT NOT NULL
);
