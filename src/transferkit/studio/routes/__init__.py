"""The studio's routes, one module per resource, each giving `router(studio, auth)`: `datasets`,
`jobs` (training and the queue), `runs`; the label-next queue's are `studio.labelling`'s."""
