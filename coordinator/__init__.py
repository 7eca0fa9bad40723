"""fleetfit coordinator: stores fleet results, schedules profiles, answers limit-table and fit queries."""
